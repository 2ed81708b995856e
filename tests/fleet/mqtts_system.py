"""The control plane as it runs in production, for a device's end-to-end test over TLS:
the production Mosquitto config (deploy/mosquitto/: client certificates from the fleet CA,
ACLs, CRL), the web server over HTTPS with a certificate from a private CA of its own,
and the bridge with its own client certificate, as processes (`system` fixture). Used by
test_agent_mqtts_end_to_end.py (the Python agent) and test_esp32_enroll.py (the C client).
"""

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker_tls import TlsBroker
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.contrib.auth import get_user_model
from django.db import connection
from mqtt_broker import free_port, wait_for_port
from processes import Child

from fleet.auth import SCOPE_USER
from fleet.keys import director_private_key
from fleet.models import Device
from fleet.services import api_token_create

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL = ROOT / "deploy" / "dev" / "sample-models" / "kws-1.0.0.onnx"


def database_url() -> str:
    """The test database, for the child processes."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        name = Path(str(db["NAME"])).resolve()
        return f"sqlite:///{name}?timeout=20&transaction_mode=IMMEDIATE"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return f"postgres://{db['USER'] or ''}{password}@{host}:{port}/{db['NAME']}"


def wait_for[T](predicate: Callable[[], T], what: str, diagnostics: Callable[[], str]) -> T:
    deadline = time.monotonic() + 60
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:  # not up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{diagnostics()}")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def web_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA (not the fleet's) and a certificate from it for https://127.0.0.1:
    (ca.pem, cert.pem, key.pem), as a site with its own PKI runs the control plane."""
    directory.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Site private CA"))
        .issuer_name(_name("Site private CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass
class System:
    base: str
    web_ca: Path
    broker: TlsBroker
    env: dict[str, str]
    operator_token: str
    ci_env: dict[str, str]
    children: list[Child]
    tmp_path: Path

    def api(self, method: str, path: str, body: object = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.operator_token}",
            },
        )
        context = ssl.create_default_context(cafile=str(self.web_ca))
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310
            return json.loads(response.read())

    def start(self, name: str, args: list[str], **env: str) -> Child:
        child = Child(name, args, {**self.env, **env}, self.tmp_path)
        self.children.append(child)
        return child

    def diagnostics(self) -> str:
        parts = [f"--- {c.name}\n{c.log_tail(30)}" for c in self.children]
        return "\n".join([*parts, f"--- mosquitto\n{self.broker.log_tail(20)}"])

    def publish(self, model: Path, *, name: str, version: str, hardware: str) -> None:
        """Publish `model` as CI does, with fleetctl over HTTPS."""
        subprocess.run(
            [str(BIN / "fleetctl"), "publish", str(model), "--name", name, "--version", version]
            + ["--hardware", hardware, "--format", "onnx"],
            env=self.ci_env,
            capture_output=True,
            timeout=120,
            check=True,
        )

    def wait_online(self, device_id: str, who: str) -> None:
        """Until `device_id` connected over mutual TLS as its certificate's name (the CN is
        its MQTT identity) and the bridge recorded it online from its retained status."""
        wait_for(
            lambda: f"u'{device_id}'" in self.broker.log_path.read_text(),
            f"{who}'s TLS connection",
            self.diagnostics,
        )
        wait_for(
            lambda: Device.objects.get(device_id=device_id).online,
            f"{who} online in the database",
            self.diagnostics,
        )

    def wait_committed(
        self, device_id: str, *, model: str, version: str, seq: int, who: str
    ) -> None:
        """Until `device_id` reported `model` `version` committed, for desired state `seq`."""
        committed = wait_for(
            lambda: (m := reported_model(device_id, model)) and m["status"] == "committed" and m,
            f"{model} {version} reported committed by {who}",
            self.diagnostics,
        )
        assert committed is not None
        assert committed["version"] == version
        assert Device.objects.get(device_id=device_id).reported_seq == seq


@pytest.fixture
def system(kws, release_key, ci_token, settings, tmp_path: Path) -> Iterator[System]:
    """The TLS broker, the web server and the bridge (mqtts, its own certificate)."""
    settings.FLEET_CRL_PATH = tmp_path / "control-plane" / "crl.pem"
    broker = TlsBroker.start_in(tmp_path / "mosquitto", settings.FLEET_CRL_PATH)
    # The web's workers would race to create it on first use.
    director_private_key()
    operator = get_user_model().objects.create_superuser("operator", password=None)
    _, operator_token = api_token_create(user=operator, name="e2e", scopes=[SCOPE_USER])

    port = free_port()
    base = f"https://127.0.0.1:{port}"
    web_ca, web_cert, web_key = web_tls(tmp_path / "web-tls")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "FLEET_DATA_DIR": str(tmp_path / "var"),
        "FLEET_KEYS_DIR": str(settings.FLEET_KEYS_DIR),
        "FLEET_STORAGE": "local",
        "FLEET_ARTIFACT_DIR": str(settings.STORAGES["artifacts"]["OPTIONS"]["location"]),
        "DATABASE_URL": database_url(),
        "FLEET_DB_CONN_MAX_AGE": "0",
        "FLEET_LOG_LEVEL": "INFO",
        "FLEET_PUBLIC_URL": base,
        "FLEET_CRL_PATH": str(settings.FLEET_CRL_PATH),
        # what enrollment hands the devices
        "FLEET_MQTT_URL": f"mqtts://127.0.0.1:{broker.port}",
    }
    made = System(
        base=base,
        web_ca=web_ca,
        broker=broker,
        env=env,
        operator_token=operator_token,
        ci_env={
            **env,
            "FLEET_URL": base,
            "FLEET_TOKEN": ci_token,
            "FLEET_RELEASE_KEY": str(release_key.private),
            "REQUESTS_CA_BUNDLE": str(web_ca),  # fleetctl (requests) trusts the site's CA
        },
        children=[],
        tmp_path=tmp_path,
    )
    try:
        gunicorn = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
        gunicorn += ["--certfile", str(web_cert), "--keyfile", str(web_key)]
        made.start("web", [*gunicorn, "--workers", "2", "--timeout", "60", "fleet.wsgi"])
        wait_for_port(port, 30)
        bridge = broker.bridge_credential()
        made.start(
            "bridge",
            [sys.executable, "manage.py", "bridge", "--client-id", "bridge-e2e"],
            FLEET_MQTT_BRIDGE_URL=f"mqtts://127.0.0.1:{broker.port}",
            FLEET_MQTT_BRIDGE_CA_FILE=str(bridge.ca),
            FLEET_MQTT_BRIDGE_CERT_FILE=str(bridge.cert),
            FLEET_MQTT_BRIDGE_KEY_FILE=str(bridge.key),
            FLEET_BRIDGE_SEEN_FLUSH_SECONDS="0.2",
        )
        wait_for(
            lambda: "as bridge.fleet" in broker.log_path.read_text(),
            "the bridge connected over TLS",
            made.diagnostics,
        )
        yield made
    finally:
        for child in reversed(made.children):
            child.stop()
        broker.stop()


def reported_model(device_id: str, model: str) -> dict[str, Any] | None:
    reported = Device.objects.get(device_id=device_id).reported or {}
    return next((m for m in reported.get("models", []) if m.get("name") == model), None)
