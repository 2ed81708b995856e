"""A rollout whose devices all failed never ends ``completed``: on a small selection the
install gate's minimum sample (``min_finished``) is never reached, so a stage is judged on
what it has once every device of it has finished; and a rollout that ends with more
failures than the gate allows (an operator resumed past them) ends
``completed_with_failures``, in the API, the audit and /metrics."""

import pytest
from rollout_helpers import (
    artifact,
    devices,
    evaluate,
    fresh,
    later,
    operator,
    phased,
    report,
    rows,
    use_own_director_key,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase
from ota import rollouts
from ota.models import RolloutAuditEvent, RolloutStatus
from ota.rollout_selectors import rollout_arm_progress

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _all_fail(rollout, at):
    for row in rows(rollout, state="notified"):
        report(row.device, rollout, Phase.FAILED, code=ErrorCode.HEALTH_CHECK_FAILED, at=at)


def _install_gate(rollout) -> dict:
    (gate,) = [
        g for g in fresh(rollout).gate_figures["gates"] if g["gate"] == "install_failure_rate"
    ]
    return gate


@pytest.mark.parametrize(
    ("on_breach", "ends"),
    # aborted, then rolled back at once: the devices had no previous version to go back to
    [("pause", RolloutStatus.PAUSED), ("abort", RolloutStatus.ROLLED_BACK)],
)
def test_three_of_three_failed_breaches_the_gate_once_the_stage_is_over(on_breach, ends):
    # given 3 devices and the default gate (5 %, judged from 10 finished devices)
    artifact("2.0.0")
    devices(3)
    rollout = phased(policy={"on_breach": on_breach})
    t0 = later()
    assert evaluate(rollout, t0).notified == 3

    # when every device fails its update
    _all_fail(rollout, t0)
    evaluate(rollout, later(1, base=t0))

    # then the gate judges the stage on its 3 devices and the policy's action follows,
    # never "completed"
    after = fresh(rollout)
    assert after.status == ends
    gate = _install_gate(rollout)
    assert gate["status"] == "breach"
    assert gate["figures"]["arms"]["main"] == {
        "finished": 3,
        "succeeded": 0,
        "failed": 3,
        "timed_out": 0,
        "failure_rate": 1.0,
        "judged": True,
    }
    assert "3 of 3 failed" in gate["detail"]
    # and /metrics shows the gate failing, not "passing" below the minimum sample
    (progress,) = rollout_arm_progress()
    assert progress.gates["install_failure_rate"].passing is False


def test_a_stage_still_in_flight_is_not_judged_below_the_minimum():
    # given 3 devices, one failed and two still updating
    artifact("2.0.0")
    fleet = devices(3)
    rollout = phased()
    t0 = later()
    evaluate(rollout, t0)
    report(fleet[0], rollout, Phase.FAILED, at=t0)

    # then one early failure does not stop the rollout while the stage goes on
    evaluate(rollout, later(1, base=t0))
    assert fresh(rollout).status == RolloutStatus.RUNNING
    assert _install_gate(rollout)["status"] == "insufficient_data"


def test_a_small_stage_within_the_threshold_goes_on():
    # given 20 devices in a first stage of 10 % (2 devices), both succeed
    artifact("2.0.0")
    devices(20)
    rollout = phased(stages=[{"percent": 10}, {"percent": 100}])
    t0 = later()
    assert evaluate(rollout, t0).notified == 2
    for row in rows(rollout, state="notified"):
        report(row.device, rollout, Phase.COMMITTED, at=t0)

    # then the settled stage is judged, passes, and the next opens
    evaluate(rollout, later(1, base=t0))
    assert fresh(rollout).current_stage == 1
    assert fresh(rollout).status == RolloutStatus.RUNNING


def test_resuming_past_the_failures_ends_completed_with_failures():
    # given a 3-device rollout paused because all 3 failed
    artifact("2.0.0")
    devices(3)
    rollout = phased()
    t0 = later()
    evaluate(rollout, t0)
    _all_fail(rollout, t0)
    evaluate(rollout, later(1, base=t0))
    assert fresh(rollout).status == RolloutStatus.PAUSED

    # when an operator resumes it (acknowledging the failures) and it runs to its end
    rollouts.rollout_resume(rollout=fresh(rollout), by=operator(), reason="looked at it")
    evaluate(rollout, later(2, base=t0))

    # then it is over, but not "completed": its outcome says what happened
    done = fresh(rollout)
    assert done.status == RolloutStatus.COMPLETED_WITH_FAILURES
    assert done.finished_at is not None
    last = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk").last()
    assert last is not None
    assert (last.from_status, last.to_status, last.actor_name) == (
        "running",
        "completed_with_failures",
        "engine",
    )
    assert "arm main: 3 of 3 failed (100.0% > 5.0%)" in last.reason
