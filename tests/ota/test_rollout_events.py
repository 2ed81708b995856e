"""What drives evaluations: device events (after their transaction commits, once per
rollout per transaction), reported states, and the beat (which also starts scheduled
rollouts). Celery runs eagerly here, as in the embedded default."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from rollout_helpers import (
    artifact,
    desired_seq,
    devices,
    evaluate,
    fresh,
    later,
    operator,
    phased,
    report,
    report_state,
    rows,
    states,
    use_own_director_key,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase
from ota import rollouts, tasks
from ota.models import RolloutAuditEvent, RolloutStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


@pytest.fixture
def queued(monkeypatch):
    """The rollout ids evaluations were queued for (instead of running them)."""
    ids: list[str] = []
    monkeypatch.setattr(tasks.rollout_evaluate_task, "delay", ids.append)
    return ids


def test_a_decisive_event_evaluates_the_rollout_after_commit(django_capture_on_commit_callbacks):
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased()
    evaluate(rollout)

    # when the bridge stores a `committed` event in its batch transaction and commits
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        report(device, rollout, Phase.COMMITTED)
        assert states(rollout) == {device.device_id: "notified"}  # nothing before commit

    # then one evaluation ran (eagerly) and recorded the outcome; the rollout completed
    assert len(callbacks) == 1
    assert states(rollout) == {device.device_id: "succeeded"}
    assert fresh(rollout).status == RolloutStatus.COMPLETED


def test_one_transaction_queues_one_evaluation_per_rollout(
    queued, django_capture_on_commit_callbacks
):
    artifact("2.0.0")
    fleet = devices(5)
    rollout = phased()
    evaluate(rollout)

    with django_capture_on_commit_callbacks(execute=True):
        for device in fleet:
            report(device, rollout, Phase.COMMITTED)
        # progress phases, other systems' rollout ids and events outside rollouts queue nothing
        report(fleet[0], rollout, Phase.DOWNLOADING)
        report(fleet[1], "canary-7", Phase.COMMITTED)
        report(fleet[2], None, Phase.COMMITTED)

    assert queued == [rollout.public_id]


def test_a_rolled_back_transaction_does_not_swallow_the_next_trigger(
    queued, django_capture_on_commit_callbacks
):
    artifact("2.0.0")
    first, second = devices(2)
    rollout = phased()
    evaluate(rollout)

    with django_capture_on_commit_callbacks(execute=True):
        try:
            with transaction.atomic():
                report(first, rollout, Phase.COMMITTED)
                raise RuntimeError("the bridge's batch failed")
        except RuntimeError:
            pass
        report(second, rollout, Phase.COMMITTED)

    assert queued == [rollout.public_id]


def test_a_device_already_running_the_version_succeeds_from_its_report():
    # the agent sends no event when the desired version is installed already; it only
    # publishes its state with the new last_seq
    artifact("2.0.0", counter=20)
    (device,) = devices(1)
    rollout = phased()
    evaluate(rollout)

    report_state(device, "2.0.0", 20, last_seq=desired_seq(device) - 1)
    evaluate(rollout)
    assert states(rollout) == {device.device_id: "notified"}  # an older report proves nothing

    report_state(device, "2.0.0", 20)
    evaluate(rollout)
    assert states(rollout) == {device.device_id: "succeeded"}


def test_devices_that_committed_are_decided_without_reading_their_reports():
    # given three devices that committed and reported the new version, and one that only
    # reported it (it ran the version already)
    artifact("2.0.0", counter=20)
    devices(4)
    rollout = phased()
    evaluate(rollout)
    everyone = [row.device for row in rows(rollout)]
    committed, reported_only = everyone[:3], everyone[3]
    for device in committed:
        report(device, rollout, Phase.COMMITTED)
        report_state(device, "2.0.0", 20)
    report_state(reported_only, "2.0.0", 20)
    # when the rollout is evaluated
    reads: list[list[object]] = []

    def record(execute, sql, params, many, context):
        if '"reported"' in sql and sql.lstrip().startswith("SELECT"):
            # the pks: one array literal on PostgreSQL ('{4,7}'), one parameter each elsewhere
            reads.append(
                [int(v) for p in params for v in str(p).strip("{}").split(",")]
                if connection.vendor == "postgresql"
                else list(params)
            )
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        evaluate(rollout)
    # then all four succeeded, and only the one without an event had its report read
    assert set(states(rollout).values()) == {"succeeded"}
    assert reads == [[reported_only.pk]]


def test_a_refused_desired_state_fails_the_device():
    # a whole envelope refused (e.g. expired) names neither model nor rollout
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased(policy={"min_finished": 5})
    evaluate(rollout)

    report(device, None, Phase.REJECTED, code=ErrorCode.COMMAND_EXPIRED, name=None)
    evaluate(rollout)

    (row,) = rows(rollout)
    assert (row.state, row.last_phase, row.last_code) == ("failed", "rejected", "command_expired")


def test_events_of_an_earlier_attempt_are_ignored():
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased(policy={"retries": 1, "min_finished": 5})
    evaluate(rollout)
    report(device, rollout, Phase.FAILED)
    # failed, retried: notified again with a new seq (once pacing releases a token)
    evaluate(rollout, later(seconds=61))
    (row,) = rows(rollout)
    assert (row.state, row.attempts, row.desired_seq) == ("notified", 2, 2)

    # the old failure does not fail the new attempt; its own progress counts
    evaluate(rollout, later(seconds=62))
    assert states(rollout) == {device.device_id: "notified"}
    report(device, rollout, Phase.COMMITTED)
    evaluate(rollout, later(seconds=63))
    assert states(rollout) == {device.device_id: "succeeded"}


def test_retries_stop_at_the_limit():
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased(policy={"retries": 2, "min_finished": 5})
    evaluate(rollout)
    for minute in range(1, 4):
        report(device, rollout, Phase.FAILED)
        evaluate(rollout, later(minutes=minute))
    (row,) = rows(rollout)
    assert (row.state, row.attempts) == ("failed", 3)
    assert desired_seq(device) == 3


def test_the_beat_starts_scheduled_rollouts_when_their_time_comes():
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased(start=False)
    rollouts.rollout_schedule(
        rollout=rollout, by=operator(), starts_at=timezone.now() + timedelta(hours=1)
    )

    # the beat before the start time: nothing happens
    assert tasks.rollouts_tick_task() == 1
    assert fresh(rollout).status == RolloutStatus.SCHEDULED

    # at the start time the engine starts it and notifies in the same evaluation
    result = evaluate(rollout, timezone.now() + timedelta(hours=1, seconds=1))
    assert result.status == RolloutStatus.RUNNING
    assert result.notified == 1
    started = RolloutAuditEvent.objects.get(rollout=rollout, to_status="running")
    assert started.actor_name == "engine"
    assert started.reason.startswith("start time")


def test_the_beat_evaluates_running_rollouts():
    artifact("2.0.0")
    devices(2)
    rollout = phased()

    assert tasks.rollouts_tick_task() == 1  # eager: the evaluation ran

    assert {r.state for r in rows(rollout)} == {"notified"}


def test_the_task_ignores_ids_that_are_not_rollouts():
    assert tasks.rollout_evaluate_task("r-999999")["status"] == ""
    assert tasks.rollout_evaluate_task("canary")["status"] == ""
