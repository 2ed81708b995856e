"""The `fleet-agent` distribution (deploy/agent/): a wheel with the agent alone, installed
into a Python 3.11 virtual environment as on a device, where it runs and verifies what
the server signs.

Building the wheel and installing it (pip fetches paho-mqtt, cryptography, tuf, ... from
the package index) takes half a minute, so both happen once for the module.
"""

import base64
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from datetime import UTC, datetime, timedelta
from email.parser import Parser
from pathlib import Path

import pytest
from mqtt_broker import MosquittoBroker
from packaging.requirements import Requirement
from service_check import require_service

from device_agent.protocol.envelope import (
    generate_director_key,
    public_key_to_pem,
    sign_desired,
)
from device_agent.protocol.messages import DesiredState, ModelTarget, parse_state

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy" / "agent" / "build_wheel.py"
AGENT_PYPROJECT = ROOT / "deploy" / "agent" / "pyproject.toml"
AGENT = ROOT / "device_agent"

pytestmark = pytest.mark.timeout(600)


def _python311() -> str | None:
    candidates = [
        "/usr/bin/python3.11",
        shutil.which("python3.11"),
        *sorted(glob.glob("/root/.pyenv/versions/3.11.*/bin/python"), reverse=True),
    ]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.stdout.strip() == "True":
            return candidate
    return None


def _device_env() -> dict[str, str]:
    # Nothing of the checkout may leak in: no PYTHONPATH, and commands run outside ROOT.
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, cwd=cwd, env=_device_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.parent == out
    assert path.exists()
    return path


@pytest.fixture(scope="module")
def device(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python 3.11 venv with the wheel installed; returns its bin/ directory."""
    python = _python311()
    require_service(
        python is not None,
        "Python 3.11 (the devices' interpreter)",
        "apt-get install python3.11 python3.11-venv",
    )
    assert python is not None
    home = tmp_path_factory.mktemp("device")
    venv = home / "venv"
    created = subprocess.run(
        [python, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=120
    )
    require_service(
        created.returncode == 0,
        f"venv with pip for {python} ({created.stderr.strip()[-200:]})",
        "apt-get install python3.11-venv",
    )
    _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        cwd=home,
        timeout=480,
    )
    return venv / "bin"


def test_the_wheel_holds_the_agent_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()

    code = {n for n in names if ".dist-info/" not in n}
    # every module of the two packages, and only those (no tests, no server, no caches)
    expected = {
        str(p.relative_to(ROOT))
        for package in (AGENT, AGENT / "protocol")
        for p in package.glob("*.py")
    }
    assert code == expected
    assert not any(n.startswith(("fleet/", "ota/", "telemetry/", "tests/")) for n in names)

    assert metadata["Name"] == "fleet-agent"
    assert metadata["Requires-Python"] == ">=3.11"
    requires = metadata.get_all("Requires-Dist") or []
    names_required = {re.split(r"[;\[<>=!~ ]", r, maxsplit=1)[0] for r in requires}
    assert names_required == {
        "paho-mqtt",
        "cryptography",
        "tuf",
        "securesystemslib",
        "urllib3",
        "onnxruntime",
    }
    assert 'onnxruntime<2,>=1.18; extra == "onnx"' in requires
    assert "fleet-agent = device_agent.cli:main" in scripts


def _requirements(pyproject: Path) -> dict[str, Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return {r.name: r for r in map(Requirement, project["dependencies"])}


def test_the_agents_ranges_are_the_control_planes() -> None:
    # The agent is tested in the project's venv, which the root pyproject.toml resolves:
    # a wider range in the agent's distribution would install versions no test ran on.
    agent = _requirements(AGENT_PYPROJECT)
    root = _requirements(ROOT / "pyproject.toml")
    for name, requirement in agent.items():
        assert name in root, f"{name} is not a dependency of the root pyproject.toml"
        assert requirement.specifier == root[name].specifier, name
        assert requirement.extras == root[name].extras, name


MQTT_ON_DEVICE = """
import json, sys
from importlib.metadata import version
from device_agent.mqtt import MqttLink
from device_agent.protocol.topics import Channel

link = MqttLink(broker_url=sys.argv[1], device_id="cam-0042", tls=None,
                on_desired=lambda payload: None, protocol="5", redeliver_first_s=0.1)
link.start()
connected = link.connected.wait(20)
link.client.subscribe("fleet/v1/devices/+/events", qos=1)
link.publish(Channel.EVENTS, b'{"probe": 1}')
flushed = link.flush(20)
link.stop()
print(json.dumps({"paho": version("paho-mqtt"), "connected": connected, "flushed": flushed}))
"""


def test_the_agent_on_python_311_talks_mqtt_with_the_paho_it_installed(
    device: Path, tmp_path: Path
) -> None:
    # given a broker, and the agent's paho range as the wheel declares it
    broker = MosquittoBroker(tmp_path / "mosquitto")
    try:
        # when the installed agent (3.11, the paho pip chose) publishes an event and flushes
        done = _run(
            [str(device / "python"), "-c", MQTT_ON_DEVICE, f"mqtt://127.0.0.1:{broker.port}"],
            cwd=tmp_path,
        )
    finally:
        broker.stop()
    result = json.loads(done.stdout)

    # then that paho is within the declared range, and the link works on it
    assert result["paho"] in _requirements(AGENT_PYPROJECT)["paho-mqtt"].specifier
    assert result["connected"] is True
    assert result["flushed"] is True


def test_the_agent_installs_and_imports_on_python_311(device: Path, tmp_path: Path) -> None:
    # the console script works
    shown = _run([str(device / "fleet-agent"), "--help"], cwd=tmp_path)
    for command in ("enroll", "run", "status", "rollback", "report"):
        assert command in shown.stdout

    # every module of the agent imports on 3.11, from the venv, without Django around
    probe = """
import importlib, importlib.util, json, pkgutil, sys
import device_agent
modules = [m.name for m in pkgutil.walk_packages(device_agent.__path__, "device_agent.")]
for name in modules:
    importlib.import_module(name)
print(json.dumps({
    "version": list(sys.version_info[:2]),
    "file": device_agent.__file__,
    "prefix": sys.prefix,
    "modules": modules,
    "django": importlib.util.find_spec("django") is not None,
}))
"""
    found = json.loads(_run([str(device / "python"), "-c", probe], cwd=tmp_path).stdout)
    assert found["version"] == [3, 11]
    assert found["file"].startswith(found["prefix"])  # the installed copy, not the checkout
    assert {
        "device_agent.protocol.envelope",
        "device_agent.runner",
        "device_agent.telemetry",
        "device_agent.mqtt",
        "device_agent.verify",
    } <= set(found["modules"])
    assert found["django"] is False


VERIFY_ON_DEVICE = """
import json, sys
from datetime import UTC, datetime
from device_agent.protocol.envelope import verify_desired
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import ModelState, Phase, ReportedState, Slot

envelope, tampered, key = (open(p, "rb").read() for p in sys.argv[1:4])
desired = verify_desired(envelope, key)
try:
    verify_desired(tampered, key)
    refused = None
except ProtocolError as exc:
    refused = str(exc.code)
state = ReportedState(
    agent_version="0.1.0",
    hardware=desired.models[0].hardware,
    models=(ModelState(name=desired.models[0].name, version=desired.models[0].version,
                       release_counter=desired.models[0].release_counter, slot=Slot.B,
                       status=Phase.COMMITTED),),
    last_seq=desired.seq,
)
print(json.dumps({"desired": desired.to_json().decode(), "refused": refused,
                  "state": state.to_json().decode()}))
"""


def test_the_agent_on_python_311_verifies_what_the_server_signs(
    device: Path, tmp_path: Path
) -> None:
    # given a desired state signed with a director key, in this (3.12) process
    key = generate_director_key()
    now = datetime.now(UTC).replace(microsecond=0)
    path = "models/kws/1.4.0/jetson-orin-fp16/model.onnx"
    desired = DesiredState(
        device_id="cam-0042",
        seq=17,
        issued_at=now,
        expires_at=now + timedelta(days=7),
        models=(
            ModelTarget(
                name="kws",
                path=path,
                version="1.4.0",
                release_counter=14,
                hardware="jetson-orin-fp16",
                sha256="ab" * 32,
                length=48213,
                url=f"https://fleet.example.com/tuf/targets/{path}",
                rollout_id="r-9",
                arm="B",
            ),
        ),
    )
    envelope = sign_desired(desired, key)
    body = json.loads(envelope)
    forged = desired.to_json().replace(b'"seq":17', b'"seq":18')
    body["payload"] = base64.b64encode(forged).decode()
    files = {
        "envelope": envelope,
        "tampered": json.dumps(body).encode(),
        "key.pem": public_key_to_pem(key.public_key()),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    # when the agent installed on Python 3.11 verifies them
    done = _run(
        [str(device / "python"), "-c", VERIFY_ON_DEVICE, *(str(tmp_path / n) for n in files)],
        cwd=tmp_path,
    )
    result = json.loads(done.stdout)

    # then it accepts the genuine one as signed, refuses the altered one,
    assert result["desired"].encode() == desired.to_json()
    assert result["refused"] == "signature_invalid"
    # and what it reports back parses on the server's side
    state = parse_state(result["state"].encode())
    assert (state.last_seq, state.models[0].version) == (17, "1.4.0")
