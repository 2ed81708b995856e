"""Rollout progress for Prometheus: ota.rollout_selectors.rollout_arm_progress feeds the
telemetry module's fleet_rollout_* families (per arm, bounded labels)."""

import pytest
from rollout_helpers import (
    ab,
    artifact,
    devices,
    evaluate,
    phased,
    report,
    use_own_director_key,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase
from ota.rollout_selectors import rollout_arm_progress

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):  # type: ignore[no-untyped-def]
    use_own_director_key(settings, tmp_path)


def test_phased_progress_has_one_arm_main_with_states_failures_and_gates():  # type: ignore[no-untyped-def]
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
    assert progress.devices == {"failed": 1, "succeeded": 1, "notified": 2}
    assert progress.failures == {"disk_full": 1}
    gate = progress.gates["install_failure_rate"]
    assert (gate.value, gate.threshold, gate.passing) == (0.5, 0.6, True)


def test_ab_progress_is_per_arm():  # type: ignore[no-untyped-def]
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
