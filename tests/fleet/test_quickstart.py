"""The README's run command, end to end: the whole system on embedded defaults (broker,
bridge, Celery worker and beat on the filesystem queue, web, simulated devices), the
sample model installed everywhere by a first rollout and a phased rollout of its second
version running, telemetry from the simulated apps, and CI publishing another version."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_broker import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _wait(predicate, what: str, timeout: float = 90.0):
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


def _get(url: str, token: str | None = None) -> dict:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def _quickstart_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEET_", "DATABASE_URL", "DJANGO_", "CELERY_"))
    }
    env.update(
        FLEET_DATA_DIR=str(tmp_path / "var"),
        FLEET_PORT=str(free_port()),
        FLEET_MQTT_PORT=str(free_port()),
        FLEET_BRIDGE_METRICS_PORT=str(free_port()),
        FLEET_DEVICES="2",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def _running(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    output = tmp_path / "fleet_up.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "fleet_up"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{env['FLEET_PORT']}"
    try:
        _wait(lambda: _get(f"{base}/healthz")["status"] == "ok", "healthz", 240)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def quickstart(tmp_path):
    env = _quickstart_env(tmp_path)
    with _running(tmp_path, env) as base:
        yield base, tmp_path / "var", env


def _printed(output: Path, heading: str) -> str:
    """The shell lines printed under ``heading`` (up to a blank line), as a script."""
    text = output.read_text()
    assert heading in text, text
    block = text.split(heading, 1)[1].split("\n\n", 1)[0]
    return "\n".join(line.strip() for line in block.splitlines()[1:])


def _sh(script: str, env: dict[str, str]) -> str:
    """Run printed commands as a user would: a shell in the checkout, with the user's env."""
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{script}\n{done.stdout}{done.stderr}"
    return done.stdout


def test_quickstart_runs_the_whole_system(quickstart, tmp_path):
    base, data, env = quickstart
    # the operator's token (the quick start prints the CI one; the operator makes their own)
    token = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "api_token_create",
            "--user",
            "operator",
            "--name",
            "t",
            "--scope",
            "fleet:read",
        ],
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

    # the sample: kws 1.0.0 everywhere, through a first rollout, then a phased rollout of
    # 1.1.0 running, in the API and in /metrics
    def rollouts(version: str, status: str) -> list[dict]:
        found = _get(f"{base}/api/v1/rollouts/", token)["results"]
        return [r for r in found if r["version"] == version and r["status"] == status]

    (first,) = _wait(lambda: rollouts("1.0.0", "completed"), "kws 1.0.0 everywhere", 240)
    devices = _get(f"{base}/api/v1/rollouts/{first['id']}/devices", token)["results"]
    assert {(d["device"], d["state"]) for d in devices} == {
        ("sim-001", "succeeded"),
        ("sim-002", "succeeded"),
    }

    (rollout,) = _wait(lambda: rollouts("1.1.0", "running"), "kws 1.1.0 rolling out", 120)
    assert [s["percent"] for s in rollout["stages"]] == [33, 66, 100]
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:  # noqa: S310
        metrics = response.read().decode()
    info = [line for line in metrics.splitlines() if line.startswith("fleet_rollout_info{")]
    assert any(
        f'rollout="{rollout["id"]}"' in line and 'state="running"' in line for line in info
    ), info

    # the bridge serves its metrics for Prometheus's fleet-bridge job, on the printed port
    bridge_metrics = f"http://127.0.0.1:{env['FLEET_BRIDGE_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(bridge_metrics, timeout=10) as response:  # noqa: S310
        bridge_text = response.read().decode()
    assert "fleet_bridge_connected 1.0" in bridge_text
    assert 'fleet_bridge_messages_total{channel="state",result="accepted"}' in bridge_text

    # the simulated apps report the installed model's latency through their agents
    samples_url = f"{base}/api/v1/telemetry/devices/sim-001/samples?metric=latency_ms"
    _wait(lambda: _get(samples_url, token)["samples"], "latency telemetry from sim-001", 120)

    # the printed commands work as printed, from the checkout: the ports, an operator's
    # token and the rollout under way, then CI publishing another version
    output = tmp_path / "fleet_up.out"
    banner = output.read_text()
    assert f"web {base.rsplit(':', 1)[1]} (FLEET_PORT" in banner
    assert f"MQTT {env['FLEET_MQTT_PORT']} (FLEET_MQTT_PORT)" in banner
    assert (
        f"bridge metrics {env['FLEET_BRIDGE_METRICS_PORT']} (FLEET_BRIDGE_METRICS_PORT)" in banner
    )
    user_env = {**env, "PATH": "/usr/bin:/bin"}  # .venv/bin need not be on the user's PATH
    operator = _printed(output, "Steer rollouts as an operator")
    assert ".venv/bin/fleetctl rollout list" in operator or str(BIN) in operator
    assert rollout["id"] in _sh(operator, user_env)
    _wait(lambda: "fleetctl rollout show" in output.read_text(), "the sample's printed line")
    (line,) = [x for x in output.read_text().splitlines() if "fleetctl rollout show" in x]
    audit = _sh(operator + "\n" + line.strip(), user_env)
    assert f"{rollout['id']}  kws  phased 1.1.0" in audit
    assert "audit:" in audit
    _sh(_printed(output, "Publish a model as CI would"), user_env)
    versions = _get(f"{base}/api/v1/models/kws/versions/", token)
    listed = versions["results"] if isinstance(versions, dict) else versions
    assert {"1.0.0", "1.1.0", "1.2.0"} <= {v["version"] for v in listed}

    # nothing in the logs warns about what is as it should be
    for log in (data / "logs").iterdir():
        assert "No hostname was supplied" not in log.read_text(), log.name

    # what the running system wrote under var/ is the operator's alone; inside the
    # owner-only var/, artifacts keep their group-readable mode and the simulated devices
    # the modes an agent gives its applications (model slots, metrics socket)
    assert (data.stat().st_mode & 0o777) == 0o700
    wide = [
        str(p.relative_to(data))
        for p in data.rglob("*")
        if p.stat().st_mode & 0o077 and p.relative_to(data).parts[0] not in {"artifacts", "devices"}
    ]
    assert wide == [], wide


def _operator_token(env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", "api_token_create", "--user", "operator"]
        + ["--name", "t", "--scope", "fleet:read"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


@pytest.mark.system
def test_quickstart_runs_simulated_esp32_devices(tmp_path: Path) -> None:
    # given a C compiler and the client's libraries (as .ci/run installs them)
    env = _quickstart_env(tmp_path, FLEET_DEVICES="1", FLEET_ESP32_DEVICES="1")
    with _running(tmp_path, env) as base:
        token = _operator_token(env)

        # then the ESP32 device, the C client's host build, enrolls and comes online
        def online() -> list[str]:
            devices = _get(f"{base}/api/v1/devices/?online=true", token)["results"]
            return sorted(d["device_id"] for d in devices)

        assert _wait(lambda: online() == ["esp32-001", "sim-001"] and online(), "online", 120)
        device = _get(f"{base}/api/v1/devices/esp32-001/", token)
        assert device["hardware"] == "esp32s3-int8"
        banner = (tmp_path / "fleet_up.out").read_text()
        assert "ESP32         1 simulated ESP32 devices (the C client's host build" in banner


def test_quickstart_says_when_it_cannot_build_the_esp32_client(tmp_path: Path) -> None:
    # given no cmake on the PATH
    env = _quickstart_env(tmp_path, FLEET_ESP32_DEVICES="2", PATH=str(tmp_path / "empty"))
    # when the quick start prepares
    done = subprocess.run(
        [sys.executable, "manage.py", "fleet_up", "--no-serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # then it goes on without them, and says so in one line with what to install
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.strip().startswith("ESP32")]
    assert "none: FLEET_ESP32_DEVICES=2 asks for them" in line
    assert "cmake is not installed" in line
    assert "apt-get install cmake gcc libmbedtls-dev" in line
