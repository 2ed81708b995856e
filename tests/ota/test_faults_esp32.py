"""Fault injection (issue 18): the ESP32 client's host build killed (SIGKILL) at each
update step during a real phased rollout, and restarted: it converges.

Four C clients beside a Python agent (tests/ota/rollout_system.py), each told by
FLEET_OTA_POSIX_KILL_AT to kill itself once at one step of the same install: mid-download
(after a checkpoint), after the whole download is written, after the swap (before the
self-test), after the self-test passed (before the commit). Restarted without it, each
finishes: a download resumes and commits; a swap whose trial was not recorded as passed
rolls back (docs/protocol.md, "Update phases and agent states"), never leaving an
unverified slot active. The rollout completes.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from rollout_onnx import chain_onnx, selftest_meta
from rollout_system import ESP32_HARDWARE, FleetSystem, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

KILL_AT = {
    "esp32-000": "downloading",
    "esp32-001": "written",
    "esp32-002": "swapped",
    "esp32-003": "selftest_passed",
}
RESUMES = ("esp32-000", "esp32-001")  # before the swap: the job resumes and commits
ROLLS_BACK = ("esp32-002", "esp32-003")  # the swap's trial not recorded passed
# Bigger than the client's 64 KiB download checkpoint, so a kill can land mid-download.
ESP32_PADDING = 200_000


@pytest.fixture
def system(tmp_path: Path) -> Iterator[FleetSystem]:
    fleet = FleetSystem(
        tmp_path / "fleet",
        devices=1,
        esp32_devices=len(KILL_AT),
        esp32_env={d: {"FLEET_OTA_POSIX_KILL_AT": step} for d, step in KILL_AT.items()},
    )
    with fleet.running():
        yield fleet


def _restart_the_killed(system: FleetSystem, restarted: set[str]) -> bool:
    """Start again, without the kill, each C client that killed itself at its step."""
    for device_id, step in KILL_AT.items():
        child = system.agents[device_id]
        if device_id in restarted or child.alive():
            continue
        log = child.log_path.read_text(errors="replace")
        assert f"killed at {step}" in log, f"{device_id} died otherwise:\n{child.log_tail()}"
        child.env = {k: v for k, v in child.env.items() if k != "FLEET_OTA_POSIX_KILL_AT"}
        child.start()
        restarted.add(device_id)
    return len(restarted) == len(KILL_AT)


def test_the_c_client_killed_at_each_update_step_converges(
    system: FleetSystem, tmp_path: Path
) -> None:
    # given: a release with a Linux and a (bigger) ESP32 variant
    system.model_register("wake")
    data, selftest = chain_onnx(layers=1, bias=0.5)
    linux = tmp_path / "wake-1.0.0.onnx"
    linux.write_bytes(data)
    system.publish(linux, name="wake", version="1.0.0", meta=[selftest_meta(selftest)])
    esp32 = tmp_path / "wake-1.0.0-esp32.bin"
    esp32.write_bytes(data + b"esp32s3-int8" + bytes(ESP32_PADDING))
    esp32_sha = system.publish(esp32, name="wake", version="1.0.0", hardware=ESP32_HARDWARE)

    # when: it is rolled out to every device, and each C client dies at its step
    rollout = system.rollout_create(
        selection={"all": True},
        strategy="phased",
        model="wake",
        version="1.0.0",
        policy={"min_finished": 1, "max_failure_rate": 1.0, "rate_per_minute": 600},
    )
    rollout_id = str(rollout["id"])
    system.post(f"/api/v1/rollouts/{rollout_id}/start", {"reason": "faults"})
    restarted: set[str] = set()
    wait_until(
        lambda: _restart_the_killed(system, restarted), "every C client killed at its step", 90
    )

    # then: the rollout completes
    ended = ("completed", "paused", "aborted", "rolled_back")
    status = wait_until(
        lambda: (s := system.rollout_status(rollout_id)) in ended and s, "the rollout's end", 120
    )
    assert status == "completed", system.rollout(rollout_id)["gate_figures"]
    states = {d["device"]: d["state"] for d in system.rollout_devices(rollout_id)}
    # the ones killed before the swap resumed and committed the bytes published
    for device_id in [*system.device_ids(), *RESUMES]:
        assert states[device_id] == "succeeded", states
    for device_id in RESUMES:
        wait_until(
            lambda d=device_id: system.reported_version(d, "wake") == "1.0.0",  # type: ignore[misc]
            f"{device_id} reports wake 1.0.0",
        )
        assert system.esp32_installed(device_id, "wake") == esp32_sha
    # the ones killed after the swap rolled back, said so, and run no unverified slot
    for device_id in ROLLS_BACK:
        assert states[device_id] == "failed", states
        phases = system.query(
            "SELECT e.phase FROM fleet_deviceevent e JOIN fleet_device d ON d.id = e.device_id "
            "WHERE e.rollout_id = %s AND d.device_id = %s",
            rollout_id,
            device_id,
        )
        assert ("rolled_back",) in phases, phases
        assert system.reported_version(device_id, "wake") != "1.0.0"
        # nothing was installed before: no slot is active, the new one never verified
        assert system.esp32_installed(device_id, "wake") is None
