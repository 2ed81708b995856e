"""device_agent.tuf_fetch.DeadlineFetcher, ngclient's public FetcherInterface: the
control plane's private CA, environment proxies, HTTP errors as ngclient expects them.
(Its deadlines: tests/device_agent/agent/test_agent_adversarial_units.py.)"""

import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tuf.api import exceptions as tuf_exceptions

from device_agent.tuf_fetch import DeadlineFetcher

BODY = b'{"signed": {}}'


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append((self.path, self.headers.get("User-Agent", "")))
        if self.path.endswith("/missing.json"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


@contextmanager
def _server(tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def _private_ca(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA of our own and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp_path / "server.pem"
    chain.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return ca_file, context


def _fetcher(**kwargs: str) -> DeadlineFetcher:
    return DeadlineFetcher(socket_timeout_s=5.0, deadline_s=10.0, app_user_agent="t", **kwargs)


def test_metadata_from_a_server_of_the_private_ca_is_fetched(tmp_path: Path) -> None:
    ca_file, tls = _private_ca(tmp_path)
    with _server(tls) as (url, seen):
        # without the CA the certificate is refused
        with pytest.raises(tuf_exceptions.DownloadError):
            _fetcher().download_bytes(f"{url}/timestamp.json", 1000)
        # with it the file comes, and says who asked
        assert _fetcher(ca_certs=str(ca_file)).download_bytes(f"{url}/1.root.json", 1000) == BODY
    assert seen[-1][0] == "/1.root.json"
    assert seen[-1][1].startswith("t python-tuf/")


def test_an_http_error_is_a_download_http_error_with_its_status() -> None:
    with _server() as (url, _), pytest.raises(tuf_exceptions.DownloadHTTPError) as error:
        _fetcher().download_bytes(f"{url}/missing.json", 1000)
    assert error.value.status_code == 404  # ngclient: no newer root version


def test_the_proxy_of_the_environment_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    with _server() as (proxy, seen):
        monkeypatch.setenv("http_proxy", proxy)
        # a host that does not resolve: only the proxy can answer
        body = _fetcher().download_bytes("http://tuf.fleet.invalid/tuf/timestamp.json", 1000)
        assert body == BODY
        assert seen[-1][0] == "http://tuf.fleet.invalid/tuf/timestamp.json"  # absolute form

        monkeypatch.setenv("no_proxy", "127.0.0.1")
        with _server() as (direct, direct_seen):
            assert _fetcher().download_bytes(f"{direct}/snapshot.json", 1000) == BODY
        assert direct_seen[-1][0] == "/snapshot.json"
        assert len(seen) == 1
