"""End to end (issue 18): the ESP32 client's host build in real phased rollouts beside
Python agents, through PostgreSQL, Mosquitto, the web server, the bridge and a Celery
worker on Redis (tests/ota/rollout_system.py with ``esp32_devices``).

The C client enrolls with its own mbedTLS key and CSR, takes its hardware's variant of
each release from the director, downloads, verifies, swaps, runs its self-test and
commits; when its self-test fails it rolls back, and the rollout's gate sees that
failure and rolls the whole rollout back. (Mutual TLS with the enrolled certificate on
the production broker config is tests/fleet/test_esp32_enroll.py; this system's broker
is the plain quick-start one.)
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from rollout_onnx import chain_onnx, selftest_meta
from rollout_system import ESP32_HARDWARE, FleetSystem, wait_until

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

PYTHON_DEVICES = 3
ESP32 = "esp32-000"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetSystem]:
    fleet = FleetSystem(
        tmp_path_factory.mktemp("e2e-esp32"), devices=PYTHON_DEVICES, esp32_devices=1
    )
    with fleet.running():
        yield fleet


def _release(system: FleetSystem, tmp_path: Path, name: str, version: str, bias: float) -> str:
    """Publish `version` for both hardware variants; returns the ESP32 variant's sha256."""
    data, selftest = chain_onnx(layers=1, bias=bias)
    linux = tmp_path / f"{name}-{version}.onnx"
    linux.write_bytes(data)
    system.publish(linux, name=name, version=version, meta=[selftest_meta(selftest)])
    # the ESP32 variant: other bytes (its own build of the model)
    esp32 = tmp_path / f"{name}-{version}-esp32.bin"
    esp32.write_bytes(data + b"esp32s3-int8")
    return system.publish(esp32, name=name, version=version, hardware=ESP32_HARDWARE)


def _run(system: FleetSystem, **body: object) -> tuple[str, str]:
    rollout = system.rollout_create(selection={"all": True}, strategy="phased", **body)
    system.post(f"/api/v1/rollouts/{rollout['id']}/start", {"reason": "e2e"})
    rollout_id = str(rollout["id"])
    ended = ("completed", "paused", "aborted", "rolled_back")
    try:
        status = wait_until(
            lambda: (s := system.rollout_status(rollout_id)) in ended and s,
            f"{rollout_id} to end",
            300,
        )
    except AssertionError:
        print(system.diagnostics())
        raise
    return rollout_id, str(status)


def _events(system: FleetSystem, rollout_id: str, device_id: str) -> list[tuple[str, str | None]]:
    return [
        (str(phase), code)
        for phase, code in system.query(
            "SELECT e.phase, e.code FROM fleet_deviceevent e "
            "JOIN fleet_device d ON d.id = e.device_id "
            "WHERE e.rollout_id = %s AND d.device_id = %s ORDER BY e.id",
            rollout_id,
            device_id,
        )
    ]


def test_the_c_client_commits_in_a_phased_rollout_beside_python_agents(
    system: FleetSystem, tmp_path: Path
) -> None:
    # given: a release with a Linux and an ESP32 variant
    system.model_register("vision")
    esp32_sha = _release(system, tmp_path, "vision", "1.0.0", bias=0.5)

    # when: it is rolled out in two stages to every device
    rollout_id, status = _run(
        system,
        model="vision",
        version="1.0.0",
        stages=[{"percent": 50}, {"percent": 100}],
        policy={"min_finished": 1, "rate_per_minute": 600},
    )

    # then: it completed, and the C client took part like the others
    assert status == "completed", system.rollout(rollout_id)["gate_figures"]
    states = {d["device"]: d["state"] for d in system.rollout_devices(rollout_id)}
    assert states == dict.fromkeys([*system.device_ids(), ESP32], "succeeded")
    phases = [p for p, _ in _events(system, rollout_id, ESP32)]
    for phase in ("accepted", "downloaded", "verified", "swapped", "trial", "committed"):
        assert phase in phases, phases
    wait_until(lambda: system.reported_version(ESP32, "vision") == "1.0.0", "the C client's state")
    assert system.esp32_installed(ESP32, "vision") == esp32_sha


def test_the_c_clients_failed_self_test_rolls_it_back_and_trips_the_gate(
    system: FleetSystem, tmp_path: Path
) -> None:
    # given: every device on audio 1.0.0
    system.model_register("audio")
    good = _release(system, tmp_path, "audio", "1.0.0", bias=1.0)
    first, status = _run(system, model="audio", version="1.0.0", policy={"min_finished": 1})
    assert status == "completed", system.rollout(first)["gate_figures"]
    wait_until(
        lambda: system.esp32_installed(ESP32, "audio") == good, "audio 1.0.0 on the C client"
    )

    # when: 1.1.0's ESP32 variant fails the device's self-test (the Linux one passes)
    bad = _release(system, tmp_path, "audio", "1.1.0", bias=2.0)
    system.esp32_bad_models.write_text(bad + "\n")
    rollout_id, status = _run(
        system,
        model="audio",
        version="1.1.0",
        policy={"on_breach": "abort", "min_finished": 1, "max_failure_rate": 0.05},
    )

    # then: the C client rolled back and said why
    assert ("rolled_back", "health_check_failed") in _events(system, rollout_id, ESP32)
    # and the gate saw it: the rollout aborted on its install failure rate, rolled back
    assert status in ("aborted", "rolled_back")
    wait_until(lambda: system.rollout_status(rollout_id) == "rolled_back", "the rollback", 300)
    abort = next(a for a in system.audit(rollout_id) if a["to_status"] == "aborted")
    assert "install_failure_rate" in abort["reason"], abort
    failed = system.query(
        "SELECT DISTINCT d.device_id FROM fleet_deviceevent e "
        "JOIN fleet_device d ON d.id = e.device_id "
        "WHERE e.rollout_id = %s AND e.phase IN ('failed', 'rolled_back') "
        "AND e.code = 'health_check_failed'",
        rollout_id,
    )
    assert [d for (d,) in failed] == [ESP32]
    # the C client runs 1.0.0 still, from the slot it had verified, and reports it
    assert system.esp32_installed(ESP32, "audio") == good
    wait_until(lambda: system.reported_version(ESP32, "audio") == "1.0.0", "1.0.0 reported")
