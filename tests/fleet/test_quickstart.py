"""The README's run command, end to end: the whole system on embedded defaults, then a
model published as CI would, assigned to a simulated device, and installed by its agent."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mqtt_broker import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _wait(predicate, what: str, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except OSError as exc:  # not up yet
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _get(url: str, token: str | None = None) -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.fixture
def quickstart(tmp_path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEET_", "DATABASE_URL", "DJANGO_", "CELERY_"))
    }
    env.update(
        FLEET_DATA_DIR=str(tmp_path / "var"),
        FLEET_PORT=str(port),
        FLEET_MQTT_PORT=str(free_port()),
        FLEET_DEVICES="2",
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "fleet_up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _get(f"{base}/healthz")["status"] == "ok", "healthz")
        yield base, tmp_path / "var", env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        (tmp_path / "fleet_up.out").write_bytes(output or b"")


def test_quickstart_runs_the_whole_system(quickstart, tmp_path):  # type: ignore[no-untyped-def]
    base, data, env = quickstart
    # the operator's token (the quick start prints the CI one; the operator makes their own)
    token = subprocess.run(
        [sys.executable, "manage.py", "api_token_create", "--user", "operator", "--name", "t"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()

    # the simulated devices come online through broker and bridge
    def online() -> list[str]:
        devices = _get(f"{base}/api/v1/devices/?online=true", token)["results"]
        return sorted(d["device_id"] for d in devices)

    assert _wait(lambda: online() == ["sim-001", "sim-002"] and online(), "devices online")

    # CI publishes a model with the printed command
    model = tmp_path / "model.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + os.urandom(4000))
    ci_env = {
        **env,
        "FLEET_URL": base,
        "FLEET_TOKEN": (data / "ci" / "token").read_text(),
        "FLEET_RELEASE_KEY": str(data / "ci" / "release.key"),
    }
    subprocess.run(
        [
            str(BIN / "fleetctl"),
            "publish",
            str(model),
            "--name",
            "kws",
            "--version",
            "1.0.0",
            "--hardware",
            "linux-x86_64-fp32",
            "--format",
            "tflite",
        ],
        env=ci_env,
        check=True,
        capture_output=True,
        timeout=60,
    )

    # the operator assigns it to one device, whose agent installs and commits it
    request = urllib.request.Request(
        f"{base}/api/v1/devices/sim-001/desired",
        data=json.dumps({"models": [{"model": "kws", "version": "1.0.0"}]}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert json.loads(response.read())["seq"] == 1
    current = data / "devices" / "sim-001" / "models" / "kws" / "current" / "model.tflite"
    want = hashlib.sha256(model.read_bytes()).hexdigest()
    _wait(
        lambda: current.exists() and hashlib.sha256(current.read_bytes()).hexdigest() == want,
        "the model installed on sim-001",
    )

    def reported() -> list[dict]:  # type: ignore[type-arg]
        return _get(f"{base}/api/v1/devices/sim-001/", token)["reported"].get("models", [])

    installed = _wait(
        lambda: [m for m in reported() if m.get("version") == "1.0.0"], "sim-001 reporting 1.0.0"
    )
    assert installed[0]["name"] == "kws"
    assert not (data / "devices" / "sim-002" / "models" / "kws").exists()
