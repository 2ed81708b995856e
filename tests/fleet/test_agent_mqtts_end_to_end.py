"""A real agent over TLS end to end (issues 3 and 4): the production Mosquitto config
(deploy/mosquitto/, TLS with client certificates from the fleet CA, ACLs, CRL), the web
server over HTTPS with a certificate from a private CA of its own, and the bridge as
processes, the bridge with its own client certificate, and a `fleet-agent` enrolled
through the API with that private CA (`--server-ca`), which hands it the mqtts:// broker
URL, the fleet CA and its certificate. Metadata and the model come over HTTPS too.

Black box from the agent's side: the test publishes with fleetctl, sets the desired
state through the REST API and reads the database, the agent's directory and the broker.
"""

import hashlib
import json
import stat
import subprocess
from pathlib import Path

import pytest
from mqtts_system import BIN, MODEL, System, system, wait_for  # noqa: F401 - the fixture

from fleet.models import Device

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

HARDWARE = "linux-x86_64-fp32"
DEVICE = "tls-001"


def test_an_agent_enrolled_for_mqtts_comes_online_and_commits_its_desired_state(
    system: System,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    agent_dir = tmp_path / "device"
    # given a model CI has published
    system.publish(MODEL, name="kws", version="1.0.0", hardware=HARDWARE)
    published = hashlib.sha256(MODEL.read_bytes()).hexdigest()

    # when a device enrolls with a token from the API...
    token = system.api("POST", "/api/v1/enrollment-tokens", {"hours": 1, "hardware": HARDWARE})

    def enroll(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "fleet-agent"), "enroll", "--server", system.base, "--token"]
            + [token["token"], "--device-id", DEVICE, "--hardware", HARDWARE]
            + ["--dir", str(agent_dir), *extra],
            env=system.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # ...it refuses a server whose certificate no CA it trusts vouches for, and keeps nothing
    refused = enroll()
    assert refused.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
    assert not (agent_dir / "config.json").exists()
    # and with the site's CA it enrolls (the token was not spent on the refused attempt),
    # keeping that CA for metadata and downloads
    enrolled = enroll("--server-ca", str(system.web_ca))
    assert enrolled.returncode == 0, enrolled.stderr
    kept = agent_dir / "trust" / "server-ca.pem"
    assert kept.read_bytes() == system.web_ca.read_bytes()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    config = json.loads((agent_dir / "config.json").read_text())
    assert config["server_url"] == system.base
    assert config["broker_url"] == f"mqtts://127.0.0.1:{system.broker.port}"
    agent = system.start("agent", [str(BIN / "fleet-agent"), "run", "--dir", str(agent_dir)])

    # then it connects with its certificate (the CN is its MQTT identity) and the bridge
    # records it online from its retained status
    system.wait_online(DEVICE, "the agent")

    # when the operator sets its desired state through the REST API
    desired = system.api(
        "POST",
        f"/api/v1/devices/{DEVICE}/desired",
        {"models": [{"model": "kws", "version": "1.0.0"}]},
    )

    # then the bridge publishes it over TLS, the agent installs and commits the bytes
    wait_for(
        lambda: (
            system.api("GET", f"/api/v1/devices/{DEVICE}/desired")["published_seq"]
            == desired["seq"]
        ),
        "the desired state published",
        system.diagnostics,
    )

    def installed() -> str | None:
        files = sorted((agent_dir / "models" / "kws" / "current").glob("*"))
        return hashlib.sha256(files[0].read_bytes()).hexdigest() if files else None

    wait_for(lambda: installed() == published, "kws 1.0.0 installed", system.diagnostics)
    # and reports it: the bridge stores the committed version and the seq
    system.wait_committed(DEVICE, model="kws", version="1.0.0", seq=desired["seq"], who="the agent")

    # when the device loses power, the broker's will (over the same TLS session) says so
    agent.kill()
    wait_for(
        lambda: not Device.objects.get(device_id=DEVICE).online,
        "the device offline (LWT)",
        system.diagnostics,
    )
