"""A device that timed out and comes back (issue 16): its later success replaces the
timeout, the install gate sees it, and a rollout the engine paused for that timeout runs
again and completes with every device succeeded. Its events are news to the rollout
(ota.tracking) although it is no longer in flight."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rollout_helpers import (
    artifact,
    desired_seq,
    devices,
    evaluate,
    fresh,
    operator,
    phased,
    report,
    report_state,
    rows,
    states,
    use_own_director_key,
)

from device_agent.protocol.messages import Phase
from ota import rollouts
from ota.models import RolloutAuditEvent, RolloutStatus, TrackingNews

pytestmark = pytest.mark.django_db
DEVICES = 12


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _eleven_commit_one_times_out():
    """12 devices, one stage; 11 commit, the 12th (killed) says nothing and times out:
    1 of 12 failed, over the 5 % the gate allows, so the engine pauses the rollout."""
    artifact("2.0.0")
    fleet = devices(DEVICES)
    rollout = phased(policy={"device_timeout_minutes": 10})
    t0 = timezone.now()
    assert evaluate(rollout, t0).notified == DEVICES
    dead, *alive = fleet
    for device in alive:
        report(device, rollout, Phase.COMMITTED, at=t0 + timedelta(minutes=1))
    evaluate(rollout, t0 + timedelta(minutes=2))
    evaluate(rollout, t0 + timedelta(minutes=11))
    assert states(rollout)[dead.device_id] == "timed_out"
    assert fresh(rollout).status == RolloutStatus.PAUSED
    return rollout, dead, t0


def test_a_device_that_comes_back_and_commits_replaces_its_timeout_and_the_rollout_completes():
    rollout, dead, t0 = _eleven_commit_one_times_out()

    # when the device comes back and installs and commits the version
    back = t0 + timedelta(minutes=12)
    for phase in (Phase.DOWNLOADING, Phase.VERIFIED, Phase.TRIAL, Phase.COMMITTED):
        report(dead, rollout, phase, at=back)
    # its events are news to the rollout, though it is no longer in flight
    assert TrackingNews.objects.filter(rollout_id=rollout.pk, device_id=dead.pk).exists()
    result = evaluate(rollout, back + timedelta(seconds=1))  # not a full pass: news only

    # then it succeeded, the gate sees 12 of 12, the engine resumes what it paused, and
    # the rollout completes: "succeeded 12", not "succeeded 11, timed_out 1"
    (row,) = [r for r in rows(rollout) if r.device_id == dead.pk]
    assert (row.state, row.last_phase, row.last_code) == ("succeeded", "committed", "")
    assert result.status == RolloutStatus.COMPLETED
    assert set(states(rollout).values()) == {"succeeded"}
    audit = list(
        RolloutAuditEvent.objects.filter(rollout=rollout)
        .order_by("pk")
        .values_list("to_status", "actor_name", "reason")
    )
    assert [(to, actor) for to, actor, _ in audit[-3:]] == [
        ("paused", "engine"),
        ("running", "engine"),
        ("completed", "engine"),
    ]
    assert audit[-2][2].startswith("gate breach cleared: install_failure_rate")


def test_a_device_that_comes_back_and_reports_the_version_succeeds_too():
    rollout, dead, t0 = _eleven_commit_one_times_out()

    # when it comes back running the version and says so only in its state report
    report_state(dead, "2.0.0", 200, last_seq=desired_seq(dead))
    evaluate(rollout, t0 + timedelta(minutes=12))

    # then it succeeded
    assert states(rollout)[dead.device_id] == "succeeded"
    assert fresh(rollout).status == RolloutStatus.COMPLETED


def test_progress_after_a_timeout_does_not_reopen_it_and_a_failure_replaces_it():
    rollout, dead, t0 = _eleven_commit_one_times_out()

    # when it comes back and only downloads, it stays timed out (still a failure)
    report(dead, rollout, Phase.DOWNLOADING, at=t0 + timedelta(minutes=12))
    evaluate(rollout, t0 + timedelta(minutes=12, seconds=1))
    assert states(rollout)[dead.device_id] == "timed_out"
    assert fresh(rollout).status == RolloutStatus.PAUSED

    # and when it then fails, the failure (with its code) replaces the timeout
    report(dead, rollout, Phase.FAILED, at=t0 + timedelta(minutes=13))
    evaluate(rollout, t0 + timedelta(minutes=13, seconds=1))
    (row,) = [r for r in rows(rollout) if r.device_id == dead.pk]
    assert (row.state, row.last_code) == ("failed", "health_check_failed")
    assert fresh(rollout).status == RolloutStatus.PAUSED


def test_an_operators_pause_is_not_lifted_by_the_engine():
    # given 3 devices, one of which times out, and an operator who pauses the rollout
    artifact("2.0.0")
    fleet = devices(3)
    rollout = phased(stages=[{"percent": 100}], policy={"device_timeout_minutes": 10})
    t0 = timezone.now()
    evaluate(rollout, t0)
    rollouts.rollout_pause(rollout=rollout, by=operator(), reason="checking")
    for device in fleet:
        report(device, rollout, Phase.COMMITTED, at=t0 + timedelta(minutes=1))

    # when their successes are tracked, the operator's pause stays
    evaluate(rollout, t0 + timedelta(minutes=2))
    assert set(states(rollout).values()) == {"succeeded"}
    assert fresh(rollout).status == RolloutStatus.PAUSED


def test_an_engine_pause_for_a_telemetry_gate_is_not_lifted_by_the_engine():
    # given a rollout the engine paused for a telemetry gate breach
    artifact("2.0.0")
    fleet = devices(3)
    rollout = phased(policy={"device_timeout_minutes": 10})
    t0 = timezone.now()
    evaluate(rollout, t0)
    rollouts.rollout_pause(
        rollout=rollout,
        by=None,
        reason=rollouts.GATE_BREACH + "telemetry:latency_ms:p95: arm main slower",
        figures={"gates": [{"gate": "telemetry:latency_ms:p95", "status": "breach"}]},
    )

    # when its devices succeed, the install gate is fine, but the pause stays
    for device in fleet:
        report(device, rollout, Phase.COMMITTED, at=t0 + timedelta(minutes=1))
    evaluate(rollout, t0 + timedelta(minutes=2))
    assert set(states(rollout).values()) == {"succeeded"}
    assert fresh(rollout).status == RolloutStatus.PAUSED
