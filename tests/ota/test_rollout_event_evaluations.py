"""Device events queue rollout evaluations, but at most one per rollout per interval from
one process, and never leave an event without an evaluation that runs after it; the
events that may finish a stage (as many decisive ones as envelopes issued) queue theirs
at once."""

from unittest import mock

import pytest
from django.db import OperationalError, transaction
from rollout_helpers import (
    artifact,
    devices,
    evaluate,
    fresh,
    phased,
    report,
    rows,
    use_own_director_key,
)

from device_agent.protocol.messages import Phase
from ota import tasks
from ota.models import RolloutDevice


@pytest.fixture
def queued(monkeypatch):
    """A broker (not eager), a controlled clock, and the calls that queue evaluations."""
    monkeypatch.setitem(tasks.rollout_evaluate_task.app.conf, "task_always_eager", False)
    monkeypatch.setattr(tasks, "_events", {})
    # no rollout issued anything: the interval alone decides (the hand-over tests set it)
    monkeypatch.setattr(tasks.rollout_selectors, "rollout_issued_count", lambda rollout_id: 10**9)
    clock = [1000.0]
    monkeypatch.setattr(tasks.time, "monotonic", lambda: clock[0])
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(
        tasks.rollout_evaluate_task, "delay", lambda rollout_id: calls.append((rollout_id, 0.0))
    )
    monkeypatch.setattr(
        tasks.rollout_evaluate_task,
        "apply_async",
        lambda args, countdown: calls.append((args[0], countdown)),
    )
    return calls, clock


def test_a_burst_of_event_batches_queues_one_now_and_one_after_the_interval(queued) -> None:
    calls, clock = queued
    interval = tasks._event_interval()
    # the first batch's evaluation is queued at once
    tasks._queue_for_events("r-1")
    assert calls == [("r-1", 0.0)]
    # the next batches within the interval share one evaluation at its end
    clock[0] += interval / 4
    tasks._queue_for_events("r-1")
    clock[0] += interval / 4
    tasks._queue_for_events("r-1")
    assert calls[1:] == [("r-1", pytest.approx(interval * 3 / 4))]
    # another rollout is not held back by this one
    tasks._queue_for_events("r-2")
    assert calls[-1] == ("r-2", 0.0)
    # once that one has run and the interval has passed, the next is queued at once again
    clock[0] += 2 * interval
    tasks._queue_for_events("r-1")
    assert calls[-1] == ("r-1", 0.0)
    assert len(calls) == 4


def test_every_event_batch_is_followed_by_an_evaluation(queued) -> None:
    calls, clock = queued
    interval = tasks._event_interval()
    runs: list[float] = []  # when each queued evaluation runs
    for step in range(200):
        committed_at = clock[0]
        already = len(calls)
        tasks._queue_for_events("r-1")
        runs += [committed_at + countdown for _, countdown in calls[already:]]
        # an evaluation runs at or after this commit, within the interval
        assert any(committed_at <= at <= committed_at + interval + 1e-9 for at in runs)
        clock[0] += 0.013 * (1 + step % 7)
    # and they run at least the interval apart: about one per interval, not one per batch
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert min(gaps) >= interval - 1e-9
    assert len(runs) <= (clock[0] + interval - 1000.0) / interval + 1 < 200 / 3


def test_the_events_that_catch_up_with_what_was_issued_are_evaluated_at_once(
    queued, monkeypatch
) -> None:
    """A stage's last batch is not held to the interval; once per issued count, and the
    count is read only once the events have caught up with the value last read."""
    calls, clock = queued
    interval = tasks._event_interval()
    issued = {"r-1": 10}
    reads: list[str] = []

    def issued_count(rollout_id: str) -> int:
        reads.append(rollout_id)
        return issued[rollout_id]

    monkeypatch.setattr(tasks.rollout_selectors, "rollout_issued_count", issued_count)
    tasks._queue_for_events("r-1", decisive=4)  # first read: 4 of 10
    assert calls == [("r-1", 0.0)]
    assert reads == ["r-1"]
    clock[0] += interval / 4
    tasks._queue_for_events("r-1", decisive=3)  # 7 of 10: the interval, no read
    assert calls[-1] == ("r-1", pytest.approx(interval * 3 / 4))
    assert reads == ["r-1"]
    clock[0] += interval / 4
    tasks._queue_for_events("r-1", decisive=3)  # 10 of 10: at once, within the interval
    assert calls[-1] == ("r-1", 0.0)
    assert len(calls) == 3
    assert reads == ["r-1", "r-1"]
    # a straggler (counted twice) within the interval: the one queued for later covers it
    clock[0] += interval / 8
    tasks._queue_for_events("r-1", decisive=1)
    assert len(calls) == 3
    # the next stage was issued: its last events are evaluated at once again
    issued["r-1"] = 100
    clock[0] += interval / 8
    tasks._queue_for_events("r-1", decisive=88)  # 99 of 100 (the straggler counted)
    assert len(calls) == 3
    tasks._queue_for_events("r-1", decisive=1)
    assert calls[-1] == ("r-1", 0.0)
    assert len(calls) == 4


def test_an_unreadable_issued_count_still_queues_at_the_interval(queued, monkeypatch) -> None:
    calls, clock = queued

    def down(rollout_id: str) -> int:
        raise OperationalError("the database went away")

    monkeypatch.setattr(tasks.rollout_selectors, "rollout_issued_count", down)
    tasks._queue_for_events("r-3", decisive=5)
    clock[0] += tasks._event_interval() / 2
    tasks._queue_for_events("r-3", decisive=5)
    assert calls == [("r-3", 0.0), ("r-3", pytest.approx(tasks._event_interval() / 2))]


def test_an_unknown_rollout_is_held_to_the_interval(queued, monkeypatch) -> None:
    calls, clock = queued
    monkeypatch.setattr(tasks.rollout_selectors, "rollout_issued_count", lambda rollout_id: None)
    tasks._queue_for_events("r-9", decisive=5)
    clock[0] += tasks._event_interval() / 2
    tasks._queue_for_events("r-9", decisive=5)
    assert calls == [("r-9", 0.0), ("r-9", pytest.approx(tasks._event_interval() / 2))]


def test_eager_tasks_evaluate_for_every_batch(monkeypatch) -> None:
    monkeypatch.setitem(tasks.rollout_evaluate_task.app.conf, "task_always_eager", True)
    with mock.patch.object(tasks.rollout_evaluate_task, "delay") as delay:
        for _ in range(3):
            tasks._queue_for_events("r-1")
    assert delay.call_count == 3


@pytest.mark.django_db
def test_a_transaction_queues_one_evaluation_per_rollout_counting_its_decisive_events(
    django_capture_on_commit_callbacks, monkeypatch
) -> None:
    queued: list[tuple[str, int]] = []
    monkeypatch.setattr(
        tasks,
        "_queue_for_events",
        lambda rollout_id, decisive=1: queued.append((rollout_id, decisive)),
    )
    with django_capture_on_commit_callbacks(execute=True):
        for phase in ("downloading", "committed", "verifying", "failed", "rolled_back"):
            tasks.rollout_evaluate_on_commit(rollout_id="r-1", phase=phase)
        tasks.rollout_evaluate_on_commit(rollout_id="r-2", phase="rejected")
        tasks.rollout_evaluate_on_commit(rollout_id="another-system-7", phase="committed")
        assert queued == []  # nothing before the commit
    assert sorted(queued) == [("r-1", 3), ("r-2", 1)]


@pytest.mark.django_db(transaction=True)
def test_the_events_that_finish_a_stage_queue_its_evaluation_at_once(
    settings, tmp_path, monkeypatch
) -> None:
    """On the database: the engine's issued_count, and events stored as the bridge stores
    them, a transaction a batch, all within one interval."""
    use_own_director_key(settings, tmp_path)
    artifact("1.0.0")
    artifact("2.0.0")
    devices(40)
    rollout = phased(stages=[{"percent": 50}, {"percent": 100}], policy={"rate_per_minute": 10**5})
    evaluate(rollout)
    first, *middle, last = rows(rollout, state="notified")
    assert fresh(rollout).issued_count == len(middle) + 2
    # from here on evaluations are queued to a broker, on a clock that stands still
    monkeypatch.setitem(tasks.rollout_evaluate_task.app.conf, "task_always_eager", False)
    monkeypatch.setattr(tasks, "_events", {})
    monkeypatch.setattr(tasks.time, "monotonic", lambda: 1000.0)
    calls: list[float] = []
    monkeypatch.setattr(tasks.rollout_evaluate_task, "delay", lambda rollout_id: calls.append(0))
    monkeypatch.setattr(
        tasks.rollout_evaluate_task,
        "apply_async",
        lambda args, countdown: calls.append(countdown),
    )

    def batch(*finished: RolloutDevice) -> None:
        with transaction.atomic():  # the bridge's transaction; evaluations queue on commit
            for row in finished:
                report(row.device, rollout, Phase.ACCEPTED)
                report(row.device, rollout, Phase.COMMITTED)

    # when every device but one commits, in batches
    batch(first)
    for row in middle:
        batch(row)
    # then one evaluation was queued at once, and one for the end of the interval
    assert calls == [0, pytest.approx(tasks._event_interval())]
    # when the last one commits, within the interval
    batch(last)
    # then its evaluation is queued at once: the stage may have finished
    assert calls[2:] == [0]
    # and a redelivered event (stored once) queues nothing more
    batch(last)
    assert len(calls) == 3
