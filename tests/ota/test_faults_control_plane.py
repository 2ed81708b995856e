"""Fault injection (issue 16, `-m faults`): the bridge, the Celery worker with its beat and
the web server are killed (SIGKILL) in the middle of a phased rollout to 12 real agents
(MQTT 5), and started again; the devices too; and the web server is down while the devices
refresh their TUF metadata. Each scenario then checks that nothing was lost
(fault_rig.FaultSystem.assert_nothing_lost): every event and telemetry sample the
agents sent is stored exactly once, every device runs the new version, every rollout row
succeeded, every retained desired state is current."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_rig import MODEL, FaultSystem, running
from rollout_system import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultSystem]:
    with running(tmp_path_factory.mktemp("faults-control-plane")) as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def _scenario(system: FaultSystem) -> Iterator[None]:
    with system.scenario():
        yield


def _refresh_failures(agent_log: Path) -> int:
    """How many times the agent found the TUF repository unreachable (device_agent/verify.py)."""
    return agent_log.read_text().count("TUF refresh failed")


def _outbox_queued(system: FaultSystem) -> bool:
    return bool(system.scalars("SELECT count(*) FROM fleet_desiredoutbox")[0])


def test_bridge_killed_while_it_publishes_a_stage(system: FaultSystem, tmp_path: Path):
    # given a rollout baking its first stage
    version = system.release(tmp_path)
    rollout_id = system.rollout_start(version)

    def baking() -> bool:
        rollout = system.rollout(rollout_id)
        return rollout["current_stage"] == 0 and rollout["stage_settled_at"] is not None

    wait_until(baking, "the first stage's bake")
    # when the second stage opens while the broker answers nothing (SIGSTOP), so that the
    # bridge's publishes of it are in flight, unacknowledged, and the bridge is killed
    system.broker.pause()
    try:
        wait_until(lambda: system.stage_opened(rollout_id, 2), "stage 2 to open")
        wait_until(lambda: _outbox_queued(system), "stage 2 queued for the bridge")
        system.kill("bridge")
    finally:
        system.broker.resume()
    system.start_again("bridge")
    # then
    system.assert_nothing_lost(rollout_id, version)


def test_bridge_killed_just_after_it_takes_the_outbox(system: FaultSystem, tmp_path: Path):
    # given the bridge is down when a rollout's first stage is queued
    version = system.release(tmp_path)
    system.children["bridge"].stop()
    rollout_id = system.rollout_start(version)
    wait_until(lambda: _outbox_queued(system), "the first stage queued in the outbox")
    # when a bridge starts, takes the outbox lock and is killed right then
    log = system.children["bridge"].log_path
    taken = log.read_text().count("outbox lock taken")
    system.start_again("bridge")
    wait_until(lambda: log.read_text().count("outbox lock taken") > taken, "the outbox lock", 60)
    system.kill("bridge")
    system.start_again("bridge")
    # then
    system.assert_nothing_lost(rollout_id, version)


def test_worker_killed_during_a_bake(system: FaultSystem, tmp_path: Path):
    version = system.release(tmp_path)
    stages = [{"percent": 34, "bake_minutes": 0.5}, {"percent": 100}]
    rollout_id = system.rollout_start(version, stages=stages)

    # when the first stage has settled and its bake runs
    def baking() -> bool:
        rollout = system.rollout(rollout_id)
        return rollout["current_stage"] == 0 and rollout["stage_settled_at"] is not None

    wait_until(baking, "the first stage's bake")
    system.kill("worker")
    system.start_again("worker")
    # then
    system.assert_nothing_lost(rollout_id, version)


def test_worker_killed_just_after_a_stage_opens(system: FaultSystem, tmp_path: Path):
    version = system.release(tmp_path)
    rollout_id = system.rollout_start(version)
    wait_until(lambda: system.stage_opened(rollout_id, 2), "stage 2 to open")
    system.kill("worker")
    system.start_again("worker")
    system.assert_nothing_lost(rollout_id, version)


def test_web_server_killed_during_100_mb_downloads(system: FaultSystem, tmp_path: Path):
    version = system.release(tmp_path, padding_mb=100)
    rollout_id = system.rollout_start(version, stages=[{"percent": 100}])
    # when the devices are 10 MB into a 100 MB download, the web server is killed
    wait_until(
        lambda: any(system.downloading(d, 10 << 20) for d in system.device_ids()),
        "a download 10 MB in",
    )
    system.kill("web")
    system.start_again("web")
    # then every download resumes and completes
    system.assert_nothing_lost(rollout_id, version)


def test_web_server_down_while_the_devices_refresh_their_tuf_metadata(
    system: FaultSystem, tmp_path: Path
):
    version = system.release(tmp_path)
    # given a stage that opens (the worker was down when the rollout started) while the
    # web server, which serves the TUF metadata, is down
    system.children["worker"].stop()
    rollout_id = system.rollout_start(version, stages=[{"percent": 100}])
    system.kill("web")
    logs = {d: system.agents[d].log_path for d in system.device_ids()}
    before = {d: _refresh_failures(log) for d, log in logs.items()}
    system.start_again("worker")
    # when every device has found it down, and again after a backoff
    wait_until(
        lambda: all(_refresh_failures(log) >= before[d] + 2 for d, log in logs.items()),
        "every device to find the web server down twice",
    )
    # and it comes back
    system.start_again("web")
    # then each refresh went on and nothing is lost (no device refused the desired state)
    system.assert_nothing_lost(rollout_id, version)
    assert system.events_of(rollout_id, "rejected") == 0


def test_devices_killed_mid_download_and_restarted(system: FaultSystem, tmp_path: Path):
    version = system.release(tmp_path, padding_mb=100)
    rollout_id = system.rollout_start(version, stages=[{"percent": 100}])
    # when the first four devices seen a megabyte into their download are killed
    killed: list[str] = []

    def kill_downloading() -> bool:
        for device_id in system.device_ids():
            if device_id not in killed and system.downloading(device_id, 1 << 20):
                system.kill(device_id)
                killed.append(device_id)
        return len(killed) >= 4

    wait_until(kill_downloading, "four devices downloading")
    # and started again
    for device_id in killed:
        system.start_again(device_id)
    # then they resume their downloads, and nothing is lost
    system.assert_nothing_lost(rollout_id, version)


def test_a_device_offline_past_the_timeout_comes_back(system: FaultSystem, tmp_path: Path):
    version = system.release(tmp_path)
    late = system.device_ids()[-1]
    # given a device that is down when a rollout with a short device timeout reaches it
    system.kill(late)
    rollout_id = system.rollout_start(
        version,
        stages=[{"percent": 100}],
        policy={"min_finished": 1, "rate_per_minute": 600, "device_timeout_minutes": 0.1},
    )
    wait_until(
        lambda: system.devices_in(rollout_id, "timed_out") == 1, "the offline device to time out"
    )
    # and the rollout paused on it (1 of 12 failed: over the 5 % install failure gate)
    wait_until(lambda: system.rollout_status(rollout_id) == "paused", "the gate to pause it")
    # when it comes back
    system.start_again(late)
    # then it installs the version, its success replaces the timeout, the rollout completes
    wait_until(
        lambda: system.rollout_status(rollout_id) == "completed", "the rollout to complete", 180
    )
    system.assert_nothing_lost(rollout_id, version)


def test_telemetry_during_a_bridge_outage(system: FaultSystem, tmp_path: Path):
    # given every device runs a version of the model
    devices = system.device_ids()
    if not all(system.installed(d, MODEL) for d in devices):
        rollout_id = system.rollout_start(system.release(tmp_path), stages=[{"percent": 100}])
        assert system.wait_finished(rollout_id) == "completed"
    before = {d: system.samples_sent(d) for d in devices}
    # when the applications report while the bridge is down
    system.kill("bridge")
    for device_id in devices:
        system.report(device_id, 40)
    wait_until(
        lambda: all(system.samples_sent(d) >= before[d] + 40 for d in devices),
        "the agents to send the samples",
    )
    system.start_again("bridge")
    # then every sample is stored, once
    system.assert_stored("samples", system.sent_samples, system.stored_samples)
