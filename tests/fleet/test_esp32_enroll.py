"""The ESP32 client's host build enrolls itself and updates over mutual TLS (issue 18).

`fleet-ota-posix enroll` makes its P-256 key and CSR with mbedTLS and enrolls through
the real API (the web server over HTTPS with a site CA of its own, as
test_agent_mqtts_end_to_end.py runs it), keeping what it is given as records; the client
then connects with that certificate to Mosquitto on the production config and ACL,
takes the desired state the real bridge publishes, downloads the model over HTTPS,
commits it, and the bridge confirms its events and telemetry on `acks`: each telemetry
sample sent is stored once.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from esp32_build import esp32_host_build
from test_agent_mqtts_end_to_end import System, _reported, _wait, system  # noqa: F401

from fleet.models import Device
from telemetry.models import ReceivedBatch, Sample

pytestmark = [
    pytest.mark.system,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL = ROOT / "deploy" / "dev" / "sample-models" / "kws-1.0.0.onnx"
HARDWARE = "esp32s3-int8"
DEVICE = "esp32-enrolled"
SAMPLES = 3  # fewer than the client keeps unconfirmed (FLEET_OTA_TELEMETRY_QUEUE, 4)


def test_the_c_client_enrolls_connects_over_mtls_and_commits(
    system: System,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    build = esp32_host_build(tmp_path / "build")
    client_dir = tmp_path / "esp32"
    subprocess.run(
        [str(BIN / "fleetctl"), "publish", str(MODEL), "--name", "kws", "--version", "1.0.0"]
        + ["--hardware", HARDWARE, "--format", "onnx"],
        env=system.ci_env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    published = MODEL.read_bytes()
    token = system.api("POST", "/api/v1/enrollment-tokens", {"hours": 1, "hardware": HARDWARE})

    def enroll(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(build / "fleet-ota-posix"), "enroll", "--dir", str(client_dir)]
            + ["--server", system.base, "--token", token["token"]]
            + ["--device-id", DEVICE, "--hardware", HARDWARE, *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # when it enrolls against a server no CA it trusts vouches for: refused, nothing kept
    refused = enroll()
    assert refused.returncode != 0
    assert "download_failed" in refused.stderr, refused.stderr
    assert not (client_dir / "cert.rec").exists()
    # a wrong token: the server's error code, and nothing kept
    wrong = subprocess.run(
        [str(build / "fleet-ota-posix"), "enroll", "--dir", str(client_dir)]
        + ["--server", system.base, "--token", "x" * 43, "--device-id", DEVICE]
        + ["--hardware", HARDWARE, "--http-cafile", str(system.web_ca)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode != 0
    assert wrong.stderr.startswith("enroll: unauthorized: HTTP 401"), wrong.stderr
    assert not (client_dir / "cert.rec").exists()

    # when it enrolls with the site's CA
    enrolled = enroll("--http-cafile", str(system.web_ca))
    assert enrolled.returncode == 0, enrolled.stderr
    # then its certificate names it and carries the key it made itself (an EC P-256 key)
    cert = x509.load_pem_x509_certificate((client_dir / "cert.rec").read_bytes())
    key = serialization.load_pem_private_key((client_dir / "key.rec").read_bytes(), None)
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == f"CN={DEVICE}"
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert (client_dir / "broker.rec").read_text() == f"mqtts://127.0.0.1:{system.broker.port}"
    assert Device.objects.get(device_id=DEVICE).hardware == HARDWARE
    # and a second enrollment of the same directory is refused
    assert enroll("--http-cafile", str(system.web_ca)).returncode != 0

    # when it runs with what enrollment gave it (no broker, key or director options)
    client = system.start(
        "esp32",
        [str(build / "fleet-ota-posix"), "--dir", str(client_dir), "--device-id", DEVICE]
        + ["--hardware", HARDWARE, "--http-cafile", str(system.web_ca)]
        + ["--selftest", 'test -s "$FLEET_MODEL_PATH"', "--telemetry", f"kws:{SAMPLES}"],
    )
    # then it connects over mutual TLS as its certificate's name, and is online
    _wait(
        lambda: f"u'{DEVICE}'" in system.broker.log_path.read_text(),
        "the C client's TLS connection",
        system.diagnostics,
    )
    _wait(
        lambda: Device.objects.get(device_id=DEVICE).online,
        "the C client online in the database",
        system.diagnostics,
    )

    # when the operator sets its desired state
    desired = system.api(
        "POST",
        f"/api/v1/devices/{DEVICE}/desired",
        {"models": [{"model": "kws", "version": "1.0.0"}]},
    )
    # then it downloads over HTTPS, verifies, commits, and the bridge records it
    committed = _wait(
        lambda: (m := _reported(DEVICE, "kws")) and m["status"] == "committed" and m,
        "kws 1.0.0 reported committed by the C client",
        system.diagnostics,
    )
    assert committed is not None
    assert committed["version"] == "1.0.0"
    assert Device.objects.get(device_id=DEVICE).reported_seq == desired["seq"]
    slot = client_dir / "slots" / "kws.a"
    assert (
        hashlib.sha256(slot.read_bytes()[: len(published)]).digest()
        == hashlib.sha256(published).digest()
    )

    # and the bridge confirms every event on acks: each record keeps its header alone
    def all_confirmed() -> bool:
        records = list(client_dir.glob("ev*.rec"))
        return len(records) >= 5 and all(r.stat().st_size == 24 for r in records)

    _wait(all_confirmed, "every event confirmed on acks", system.diagnostics)

    # and it reports telemetry once kws runs: every message confirmed on acks by its
    # batch_id, none dropped, and each sample stored exactly once
    _wait(
        lambda: (
            f"telemetry: {SAMPLES} sent, all confirmed, 0 dropped" in client.log_path.read_text()
        ),
        "the C client's telemetry confirmed on acks",
        system.diagnostics,
    )
    assert client.log_path.read_text().count("telemetry: sent") == SAMPLES
    rows = Sample.objects.filter(device__device_id=DEVICE)
    assert sorted((r.metric, r.value, r.version) for r in rows) == [
        ("latency_ms", float(i), "1.0.0") for i in range(SAMPLES)
    ]
    assert ReceivedBatch.objects.filter(device__device_id=DEVICE).count() == SAMPLES
