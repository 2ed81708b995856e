"""Pause stops new notifications at the next evaluation while devices in flight are still
tracked; resume continues where it stopped and acknowledges the failures so far."""

from datetime import timedelta

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

from device_agent.protocol.messages import Phase
from ota import rollouts
from ota.models import RolloutStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def test_pause_stops_notifications_within_one_evaluation_and_resume_continues():
    artifact("2.0.0")
    devices(30)
    rollout = phased(policy={"rate_per_minute": 10})
    t0 = later()
    assert evaluate(rollout, t0).notified == 10
    first = rows(rollout, state="notified")

    # when an operator pauses, the next evaluation notifies nobody, minutes later too
    rollouts.rollout_pause(rollout=rollout, by=operator(), reason="checking dashboards")
    paused = evaluate(rollout, t0 + timedelta(minutes=2))
    assert (paused.status, paused.notified) == (RolloutStatus.PAUSED, 0)
    assert evaluate(rollout, t0 + timedelta(minutes=5)).notified == 0
    assert len(rows(rollout, state="pending")) == 20

    # devices already notified are still tracked while paused
    report(first[0].device, rollout, Phase.COMMITTED)
    evaluate(rollout, t0 + timedelta(minutes=6))
    assert rows(rollout, state="succeeded")[0].device_id == first[0].device_id

    # when resumed, the next evaluation continues with the next buckets
    rollouts.rollout_resume(rollout=rollout, by=operator())
    resumed = evaluate(rollout, t0 + timedelta(minutes=7))
    assert (resumed.status, resumed.notified) == (RolloutStatus.RUNNING, 10)
    notified = sorted(r.bucket for r in rows(rollout) if r.attempts)
    assert notified == sorted(r.bucket for r in rows(rollout))[:20]


def test_resume_after_a_breach_acknowledges_the_failures_so_far():
    artifact("2.0.0")
    fleet = devices(12)
    rollout = phased(policy={"min_finished": 2, "max_failure_rate": 0.5})
    evaluate(rollout)
    for device in fleet[:2]:
        report(device, rollout, Phase.FAILED)
    assert evaluate(rollout).status == RolloutStatus.PAUSED

    # resuming does not immediately pause again on the same two failures
    rollouts.rollout_resume(rollout=rollout, by=operator(), reason="site had no network")
    assert evaluate(rollout, later(seconds=1)).status == RolloutStatus.RUNNING

    # but new failures after the resume are judged again
    for device in fleet[2:4]:
        report(device, rollout, Phase.FAILED, at=later(seconds=2))
    assert evaluate(rollout, later(seconds=3)).status == RolloutStatus.PAUSED
    assert fresh(rollout).gates_since is not None
