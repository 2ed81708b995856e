"""The production Mosquitto config (deploy/mosquitto/) on a real broker, for tests.

``TlsBroker.start(tmp)`` writes the broker's files with ``manage.py mqtt_certs``, renders
deploy/mosquitto/mosquitto.conf changing only the path placeholders, the listener's
port/address and ``user`` (tests run as root with root-only temp dirs), and starts
mosquitto. ``enroll`` gives a device a certificate through the real enrollment
service; ``Peer`` is a paho client over TLS with such a credential; ``tls_probe``
reports how the broker answers a raw TLS + MQTT CONNECT.
"""

import io
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from device_csr import make_csr
from django.core.management import call_command
from mqtt_broker import MOSQUITTO, MosquittoBroker, free_port
from paho.mqtt.reasoncodes import ReasonCode
from service_check import require_service

from fleet import ca
from fleet.enrollment import device_enroll, enrollment_token_create
from fleet.management.commands import mqtt_certs
from fleet.models import Device

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
PRODUCTION_LISTENER = "listener 8883"
PRODUCTION_USER = "user mosquitto"
DEADLINE_S = 5.0
ACCEPTED = "connack 0"
# Mosquitto closes the connection without a TLS alert when it rejects a client certificate
# (revoked, missing, CRL expired); it logs "certificate verify failed" or "peer did not
# return a certificate".
REFUSED_EOF = "closed during TLS"


def render_config(
    *, port: int, cert_dir: Path, crl_file: Path, acl_file: Path, data_dir: Path, log_file: Path
) -> str:
    """deploy/mosquitto/mosquitto.conf with paths, listener address and user replaced."""
    text = (DEPLOY_DIR / "mosquitto.conf").read_text()
    for placeholder, value in {
        "@CERT_DIR@": cert_dir,
        "@CRL_FILE@": crl_file,
        "@ACL_FILE@": acl_file,
        "@DATA_DIR@": data_dir,
        "@LOG_FILE@": log_file,
    }.items():
        assert placeholder in text, f"{placeholder} is no longer in mosquitto.conf"
        text = text.replace(placeholder, str(value))
    directives = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    leftover = re.findall(r"@[A-Z_]+@", directives)
    assert not leftover, f"placeholders the test does not know: {leftover}"
    for production, test in (
        (PRODUCTION_LISTENER, f"listener {port} 127.0.0.1"),
        (PRODUCTION_USER, "user root"),
    ):
        pattern = re.compile(rf"^{re.escape(production)}$", re.MULTILINE)
        text, count = pattern.subn(test, text)
        assert count == 1, f"expected one '{production}' line in mosquitto.conf"
    return text


@dataclass(frozen=True)
class Credential:
    """A client certificate and its key on disk, plus the CA that verifies the broker."""

    name: str
    cert: Path
    key: Path
    ca: Path


class TlsBroker(MosquittoBroker):
    """Mosquitto running deploy/mosquitto/ as it is, on a free loopback port."""

    def __init__(self, directory: Path, config: str, port: int, cert_dir: Path) -> None:
        # Not MosquittoBroker.__init__: that one writes its own plain listener.
        require_service(MOSQUITTO is not None, "mosquitto", "apt-get install mosquitto")
        self.directory = directory
        self.port = port
        self.cert_dir = cert_dir
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self.config_path.write_text(config)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @classmethod
    def start_in(cls, directory: Path, crl_file: Path) -> "TlsBroker":
        """Issue the broker's files (mqtt_certs), render the config, start mosquitto."""
        cert_dir = directory / "certs"
        call_command(
            "mqtt_certs",
            "--out",
            str(cert_dir),
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
            stdout=io.StringIO(),
        )
        acl = directory / "acl"
        acl.write_text((DEPLOY_DIR / "acl").read_text())
        data = directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = render_config(
            port=port,
            cert_dir=cert_dir,
            crl_file=crl_file,
            acl_file=acl,
            data_dir=data,
            log_file=directory / "mosquitto.log",
        )
        return cls(directory, config, port, cert_dir)

    def start(self) -> None:
        """Start, failing at once with mosquitto's own message if it rejects the config."""
        assert MOSQUITTO is not None
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + DEADLINE_S
        while True:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                self.process = None
                raise RuntimeError(f"mosquitto exited: {stderr}\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen: {self.log_tail()}") from None
                time.sleep(0.02)

    def reload_and_wait(self) -> None:
        """SIGHUP, then wait until the broker has reloaded (CRL, ACL, certificates).

        The broker logs "Reloading config." and reloads in the same iteration of its
        single-threaded loop, so any handshake it handles after the line is written
        sees the new files.
        """
        before = self._reloads()
        self.reload()
        deadline = time.monotonic() + DEADLINE_S
        while self._reloads() == before:
            assert time.monotonic() < deadline, f"no reload after SIGHUP: {self.log_tail()}"
            time.sleep(0.02)

    def _reloads(self) -> int:
        try:
            return self.log_path.read_text().count("Reloading config.")
        except OSError:
            return 0

    @property
    def ca_file(self) -> Path:
        return self.cert_dir / mqtt_certs.CA_CERT

    def bridge_credential(self) -> Credential:
        return Credential(
            ca.BRIDGE_IDENTITY,
            self.cert_dir / mqtt_certs.BRIDGE_CERT,
            self.cert_dir / mqtt_certs.BRIDGE_KEY,
            self.ca_file,
        )


def enroll(device_id: str, directory: Path, hardware: str = "linux-x86_64-fp32") -> Credential:
    """Enroll ``device_id`` with a one-time token and a CSR, as a device does."""
    _, token = enrollment_token_create(by=None, hardware=hardware)
    key_pem, csr_pem = make_csr(common_name="ignored-by-the-ca")
    enrollment = device_enroll(token=token, device_id=device_id, hardware=hardware, csr_pem=csr_pem)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, ca_file = (directory / f"{device_id}.{ext}" for ext in ("pem", "key", "ca.pem"))
    cert.write_bytes(enrollment.certificate_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    ca_file.write_bytes(enrollment.ca_certificate_pem)
    return Credential(device_id, cert, key, ca_file)


def device(device_id: str) -> Device:
    return Device.objects.get(device_id=device_id)


class Peer:
    """A paho client over TLS that records what it gets, for assertions with deadlines."""

    def __init__(
        self,
        port: int,
        credential: Credential,
        *,
        client_id: str | None = None,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        username: str | None = None,
    ) -> None:
        self.port = port
        self.name = credential.name
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=credential.name if client_id is None else client_id,
            protocol=protocol,
            reconnect_on_failure=False,
        )
        self.client.tls_set(
            ca_certs=str(credential.ca), certfile=str(credential.cert), keyfile=str(credential.key)
        )
        if username is not None:
            self.client.username_pw_set(username)
        self._cond = threading.Condition()
        self.messages: list[mqtt.MQTTMessage] = []
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.connack: ReasonCode | None = None
        self.disconnected: ReasonCode | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    # paho callbacks (its network thread) ------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.connack = reason_code
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.disconnected = reason_code
            self._cond.notify_all()

    def _on_message(self, client, userdata, message):
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self.acks[mid] = reason_code
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self.subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    # test side ----------------------------------------------------------------------------
    def wait(self, predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def connect(self) -> "Peer":
        """Connect and wait for a successful CONNACK (fails the test otherwise)."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        assert self.wait(lambda: self.connack is not None or self.disconnected is not None), (
            f"{self.name}: no CONNACK"
        )
        refused = f"{self.name}: connect refused: {self.connack} / {self.disconnected}"
        assert self.connack is not None, refused
        assert not self.connack.is_failure, refused
        return self

    def subscribe(self, *filters: str, qos: int = 1) -> list[ReasonCode]:
        _, mid = self.client.subscribe([(f, qos) for f in filters])
        assert mid is not None, f"{self.name}: SUBSCRIBE not sent"
        assert self.wait(lambda: mid in self.subacks), f"{self.name}: no SUBACK"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1, wait for the PUBACK and return its reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.wait(lambda: info.mid in self.acks), f"{self.name}: no PUBACK for {topic}"
        return self.acks[info.mid]

    def received(self) -> list[tuple[str, bytes]]:
        with self._cond:
            return [(m.topic, bytes(m.payload)) for m in self.messages]

    def wait_for_message(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including (topic, payload); fails after the deadline."""
        assert self.wait(lambda: (topic, payload) in self.received()), (
            f"{self.name} never got {payload!r} on {topic}; got {self.received()}"
        )
        got = self.received()
        return got[: got.index((topic, payload)) + 1]

    def wait_for_disconnect(self, timeout: float = DEADLINE_S) -> ReasonCode | None:
        self.wait(lambda: self.disconnected is not None, timeout)
        return self.disconnected

    def close(self) -> None:
        if self.connack is not None and self.disconnected is None:
            self.client.disconnect()
        self.client.loop_stop()


def _mqtt311_connect(client_id: str) -> bytes:
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol level 4, clean session, 60 s
    body = variable + len(cid).to_bytes(2, "big") + cid
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


def tls_probe(port: int, ca_file: Path, cert: Path | None = None, key: Path | None = None) -> str:
    """How the broker answers a TLS handshake then an MQTT 3.1.1 CONNECT.

    ``ACCEPTED`` when it accepts the client, else ``REFUSED_EOF`` or the TLS alert's reason
    (e.g. "TLSV1_ALERT_UNKNOWN_CA"). Under TLS 1.3 the server judges the client's
    certificate after the client's side of the handshake is done, so the refusal shows
    only when the client reads: hence the CONNECT.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(_mqtt311_connect("probe"))
                reply = tls.recv(4)
        except ssl.SSLEOFError:
            return REFUSED_EOF
        except ssl.SSLError as exc:
            return str(exc.reason or exc)
        except ConnectionResetError:
            return "connection reset"
    if len(reply) == 4 and reply[0] == 0x20:
        return f"connack {reply[3]}"
    return f"closed {reply!r}"


def plain_probe(port: int) -> bytes:
    """How the TLS listener answers a plain-TCP MQTT CONNECT: its first bytes, if any."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as raw:
        raw.sendall(_mqtt311_connect("plain"))
        try:
            return raw.recv(4)
        except ConnectionResetError:
            return b""
