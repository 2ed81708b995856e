"""Fault injection (issue 16, `-m faults`): the broker is restarted (SIGTERM) or killed
(SIGKILL) in the middle of a rollout stage, with the 12 agents on MQTT 3.1.1 and then on
MQTT 5, and restarted while the devices send telemetry. Each scenario then checks that
nothing was lost (fault_rig.FaultSystem.assert_nothing_lost), the broker's retained
desired states included."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_rig import MODEL, FaultSystem, running
from rollout_system import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultSystem]:
    with running(tmp_path_factory.mktemp("faults-broker"), protocol="5") as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def _scenario(system: FaultSystem) -> Iterator[None]:
    with system.scenario():
        yield


def _mid_stage(system: FaultSystem, tmp_path: Path) -> tuple[str, str]:
    """A rollout, once its first devices have accepted their new desired state."""
    version = system.release(tmp_path, padding_mb=20)
    rollout_id = system.rollout_start(version)
    wait_until(lambda: system.events_of(rollout_id, "accepted") >= 1, "a device to accept")
    return rollout_id, version


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_broker_restarted_mid_stage(system: FaultSystem, tmp_path: Path, protocol: str):
    system.set_protocol(protocol)
    rollout_id, version = _mid_stage(system, tmp_path)
    # when the broker stops normally (it saves its state) and starts again
    system.broker.restart()
    # then
    system.assert_nothing_lost(rollout_id, version)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_broker_killed_mid_stage(system: FaultSystem, tmp_path: Path, protocol: str):
    system.set_protocol(protocol)
    rollout_id, version = _mid_stage(system, tmp_path)
    # when the broker is killed and comes back from its last save
    system.broker.kill()
    system.broker.start()
    # then
    system.assert_nothing_lost(rollout_id, version)


def test_telemetry_during_a_broker_restart(system: FaultSystem, tmp_path: Path):
    system.set_protocol("5")
    devices = system.device_ids()
    if not all(system.installed(d, MODEL) for d in devices):
        rollout_id = system.rollout_start(system.release(tmp_path), stages=[{"percent": 100}])
        assert system.wait_finished(rollout_id) == "completed"
    before = {d: system.samples_sent(d) for d in devices}
    # when the applications report before, while and after the broker restarts
    for device_id in devices:
        system.report(device_id, 20)
    system.broker.stop()
    for device_id in devices:
        system.report(device_id, 20, start=20)
    system.broker.start()
    for device_id in devices:
        system.report(device_id, 20, start=40)
    wait_until(
        lambda: all(system.samples_sent(d) >= before[d] + 60 for d in devices),
        "the agents to send every sample",
    )
    # then every sample is stored, once
    system.assert_stored("samples", system.sent_samples, system.stored_samples)
