"""Rollout progress for Prometheus: ota.rollout_selectors.rollout_arm_progress feeds the
telemetry module's fleet_rollout_* families (per arm, bounded labels)."""

import pytest
from rollout_helpers import (
    ab,
    artifact,
    commit_all,
    devices,
    evaluate,
    operator,
    phased,
    report,
    use_own_director_key,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase
from ota import rollouts
from ota.models import RolloutDeviceState
from ota.rollout_selectors import rollout_arm_progress

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def test_phased_progress_has_one_arm_main_with_states_failures_and_gates():
    artifact("2.0.0")
    fleet = devices(4)
    rollout = phased(policy={"min_finished": 2, "max_failure_rate": 0.6})
    evaluate(rollout)
    report(fleet[0], rollout, Phase.FAILED, code=ErrorCode.DISK_FULL)
    report(fleet[1], rollout, Phase.COMMITTED)
    evaluate(rollout)

    (progress,) = rollout_arm_progress()

    assert (progress.rollout, progress.model, progress.strategy, progress.state) == (
        rollout.public_id,
        "kws",
        "phased",
        "running",
    )
    assert (progress.arm, progress.stage, progress.stage_percent) == ("main", 0, 100)
    # every state from zero, so a state's first devices are a rise from 0
    assert {k: v for k, v in progress.devices.items() if v} == {
        "failed": 1,
        "succeeded": 1,
        "notified": 2,
    }
    assert set(progress.devices) == set(RolloutDeviceState.values)
    assert progress.failures == {"disk_full": 1}
    gate = progress.gates["install_failure_rate"]
    assert (gate.value, gate.threshold, gate.state, gate.passing) == (0.5, 0.6, "passing", True)
    assert not progress.finished
    assert progress.created == rollout.created_at


def test_a_gate_below_its_minimum_is_insufficient_data_not_passing():
    # given 4 devices in flight and a gate judged from 3 finished devices
    artifact("2.0.0")
    fleet = devices(4)
    rollout = phased(policy={"min_finished": 3, "max_failure_rate": 0.5})
    evaluate(rollout)
    (progress,) = rollout_arm_progress()
    gate = progress.gates["install_failure_rate"]
    assert (gate.value, gate.state) == (None, "insufficient_data")  # nothing finished

    # when 2 of them failed, below the minimum, the stage still in flight
    for device in fleet[:2]:
        report(device, rollout, Phase.FAILED, code=ErrorCode.DISK_FULL)
    evaluate(rollout)

    # then the figure shows, and the verdict is "not judged yet", never "passing"
    (progress,) = rollout_arm_progress()
    gate = progress.gates["install_failure_rate"]
    assert (gate.value, gate.state, gate.passing) == (1.0, "insufficient_data", False)


def test_a_rollout_where_every_device_failed_reads_breached_and_finished():
    artifact("2.0.0")
    fleet = devices(3)
    rollout = phased(policy={"on_breach": "abort"})
    evaluate(rollout)
    for device in fleet:
        report(device, rollout, Phase.FAILED, code=ErrorCode.HEALTH_CHECK_FAILED)
    evaluate(rollout)

    (progress,) = rollout_arm_progress()

    assert progress.finished
    assert sum(progress.devices.values()) == 3
    gate = progress.gates["install_failure_rate"]
    assert (gate.value, gate.state) == (1.0, "breached")


def test_an_aborted_ab_rollout_is_not_a_failure_of_its_arms():
    # given an A/B rollout whose devices all committed, then an operator's abort
    artifact("1.0.0")
    artifact("2.0.0")
    devices(6)
    rollout = ab(
        arms=[
            {"name": "A", "version": "1.0.0", "baseline": True},
            {"name": "B", "version": "2.0.0"},
        ],
        policy={"min_finished": 1},
    )
    evaluate(rollout)
    commit_all(rollout)
    evaluate(rollout)
    rollouts.rollout_abort(rollout=rollout, by=operator(), reason="changed our minds")
    evaluate(rollout)

    arms = {p.arm: p for p in rollout_arm_progress()}

    # then each arm's failure rate is the engine's: 0, and its gate passes
    assert set(arms) == {"A", "B"}
    for progress in arms.values():
        assert progress.state in ("aborted", "rolled_back")
        assert progress.failures == {}
        gate = progress.gates["install_failure_rate"]
        assert (gate.value, gate.state) == (0.0, "passing")


def test_ab_progress_is_per_arm():
    artifact("1.0.0")
    artifact("2.0.0")
    devices(40)
    ab(
        arms=[
            {"name": "A", "version": "1.0.0", "baseline": True},
            {"name": "B", "version": "2.0.0"},
        ]
    )

    arms = {p.arm: p for p in rollout_arm_progress()}

    assert set(arms) == {"A", "B"}
    assert sum(sum(p.devices.values()) for p in arms.values()) == 40
