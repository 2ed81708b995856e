"""`fleet-agent enroll`: a new key, a certificate for it, and the trust pinned on disk."""

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_agent import AGENT_VERSION
from device_agent.command_error import CommandError
from device_agent.config import AgentConfig, Layout
from device_agent.protocol.envelope import load_public_key_pem
from device_agent.protocol.fsutil import write_atomic

ENROLL_TIMEOUT_S = 60


@dataclass(frozen=True)
class EnrollRequest:
    """What the operator gave `fleet-agent enroll`."""

    server: str
    token: str
    device_id: str
    hardware: str
    broker_url: str | None = None
    server_ca: str | None = None
    force: bool = False


def _tls_context(cafile: Path | None) -> ssl.SSLContext:
    """Certificate and host name checked, against `cafile` or else the system's CAs."""
    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise CommandError("malformed", f"cannot use {cafile} as CA certificates: {exc}") from None


def _post_json(url: str, body: dict[str, Any], *, cafile: Path | None = None) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise CommandError("malformed", f"{url} is not an http(s) URL")
    context = _tls_context(cafile)
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": f"fleet-agent/{AGENT_VERSION}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 - scheme checked above
            request, timeout=ENROLL_TIMEOUT_S, context=context
        ) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            raise CommandError(str(error["code"]), str(error["detail"])) from None
        except (ValueError, KeyError, TypeError):
            raise CommandError("malformed", f"HTTP {exc.code} from {url}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CommandError("download_failed", f"cannot reach {url}: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError("malformed", "the enrollment answer is not a JSON object")
    return data


def _server_ca(path: str | None) -> bytes | None:
    """The --server-ca file's certificates (checked to be PEM certificates), or None."""
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
        certificates = x509.load_pem_x509_certificates(data)
    except OSError as exc:
        raise CommandError("malformed", f"cannot read --server-ca {path}: {exc}") from None
    except ValueError:
        raise CommandError("malformed", f"--server-ca {path} holds no PEM certificate") from None
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def device_enroll(*, layout: Layout, request: EnrollRequest) -> str:
    """Enroll this device into `layout`; returns the line that says so."""
    if (layout.root / "config.json").exists() and not request.force:
        raise CommandError("conflict", f"{layout.root} is already enrolled (use --force to redo)")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.device_id)]))
        .sign(key, hashes.SHA256())
    )
    server = request.server.rstrip("/")
    server_ca = _server_ca(request.server_ca)
    answer = _post_json(
        f"{server}/api/v1/enroll",
        {
            "token": request.token,
            "device_id": request.device_id,
            "hardware": request.hardware,
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "agent_version": AGENT_VERSION,
        },
        cafile=Path(request.server_ca) if request.server_ca else None,
    )
    try:
        certificate = str(answer["certificate"]).encode()
        ca_certificate = str(answer["ca_certificate"]).encode()
        director = str(answer["director_public_key"]).encode()
        tuf_root = answer["tuf_root"]
        tuf_url = str(answer["tuf_url"])
        broker_url = str(answer["broker_url"])
    except KeyError as exc:
        raise CommandError("malformed", f"the enrollment answer lacks {exc}") from None
    cert = x509.load_pem_x509_certificate(certificate)
    if cert.public_key() != key.public_key():
        raise CommandError("malformed", "the issued certificate is not for our key")
    load_public_key_pem(director)
    if not isinstance(tuf_root, dict) or tuf_root.get("signed", {}).get("_type") != "root":
        raise CommandError("malformed", "tuf_root is not TUF root metadata")
    config = AgentConfig(
        device_id=request.device_id,
        hardware=request.hardware,
        server_url=server,
        tuf_url=tuf_url,
        broker_url=request.broker_url or broker_url,
    )
    layout.make_dirs()
    if server_ca is not None:
        write_atomic(layout.server_ca, server_ca, mode=0o600)
    else:  # enrolled again (--force) without one: back to the system's CAs
        layout.server_ca.unlink(missing_ok=True)
    write_atomic(layout.trust_root, json.dumps(tuf_root).encode(), mode=0o600)
    write_atomic(layout.director_key, director, mode=0o600)
    write_atomic(layout.ca, ca_certificate, mode=0o600)
    write_atomic(layout.cert, certificate, mode=0o600)
    write_atomic(
        layout.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    config.save(layout.root)
    return f"enrolled {request.device_id} ({request.hardware}) into {layout.root}"
