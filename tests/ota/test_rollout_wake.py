"""Wake-ups: when the pace holds devices back, the engine says when the next one falls due
and the task schedules one evaluation then, so a paced rollout keeps its rate between
beats with no device events; evaluations after events do not start chains of their own."""

import heapq
from datetime import UTC, datetime, timedelta

import pytest
from rollout_helpers import (
    artifact,
    commit_all,
    devices,
    evaluate,
    fresh,
    phased,
    rows,
    use_own_director_key,
)

from ota import rollouts, tasks
from ota.models import Rollout, RolloutStatus
from ota.pacing import WAKE_MIN_SECONDS

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)
    settings.FLEET_ROLLOUT_TICK_SECONDS = 30


def _times(rollout):
    return sorted(r.notified_at for r in rows(rollout) if r.notified_at is not None)


def _busiest_minute(times):
    return max(sum(1 for t in times if at - timedelta(seconds=60) < t <= at) for at in times)


def test_a_paced_evaluation_asks_to_be_woken_when_the_next_device_is_due():
    # given 10/min with a burst of one: a device every 6 s
    artifact("2.0.0")
    devices(5)
    rollout = phased(policy={"rate_per_minute": 10, "rate_burst": 1})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None

    # when the first evaluation notifies the first device
    first = evaluate(rollout, t0)

    # then it asks for an evaluation when the second is due, and keeps that on the row
    assert first.notified == 1
    assert first.wake_in is not None
    assert first.wake_in == pytest.approx(6, abs=0.002)
    assert fresh(rollout).wake_at == t0 + timedelta(seconds=first.wake_in)
    assert first.to_dict()["wake_in"] == first.wake_in

    # an evaluation in between (device events) notifies nobody and asks for nothing more
    between = evaluate(rollout, t0 + timedelta(seconds=3))
    assert (between.notified, between.wake_in) == (0, None)
    assert fresh(rollout).wake_at == t0 + timedelta(seconds=first.wake_in)

    # the wake-up notifies the next device and asks for the one after
    woken = evaluate(rollout, t0 + timedelta(seconds=first.wake_in))
    assert woken.notified == 1
    assert woken.wake_in == pytest.approx(6, abs=0.002)


def test_an_evaluation_after_an_event_once_the_wake_up_is_due_asks_again():
    artifact("2.0.0")
    devices(5)
    rollout = phased(policy={"rate_per_minute": 10, "rate_burst": 1})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None
    assert evaluate(rollout, t0).wake_in is not None

    # the pending wake-up is past (lost with a worker, or it ran already): the next
    # evaluation, whatever its cause, does what it can and asks for the next due time
    late = evaluate(rollout, t0 + timedelta(seconds=7))
    assert late.notified == 1
    assert late.wake_in is not None
    assert late.wake_in == pytest.approx(5, abs=0.002)
    assert fresh(rollout).wake_at == t0 + timedelta(seconds=7 + late.wake_in)


def test_a_sooner_wake_up_replaces_a_later_one():
    artifact("2.0.0")
    devices(5)
    rollout = phased(policy={"rate_per_minute": 10, "rate_burst": 1})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None
    # a wake-up pending 20 s on (asked for at a slower rate, say)
    Rollout.objects.filter(pk=rollout.pk).update(wake_at=t0 + timedelta(seconds=20))

    result = evaluate(rollout, t0)

    assert result.wake_in is not None
    assert result.wake_in == pytest.approx(6, abs=0.002)
    assert fresh(rollout).wake_at == t0 + timedelta(seconds=result.wake_in)


def test_the_hard_limit_wakes_when_the_oldest_notification_leaves_the_minute(settings):
    # given a minute's worth at once (no burst) and a beat slower than a minute
    settings.FLEET_ROLLOUT_TICK_SECONDS = 120
    artifact("2.0.0")
    devices(15)
    rollout = phased(policy={"rate_per_minute": 10})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None

    result = evaluate(rollout, t0)

    # then ten went out and the eleventh may go when they leave the 60-s window
    assert result.notified == 10
    assert result.wake_in is not None
    assert result.wake_in == pytest.approx(60, abs=0.002)
    assert evaluate(rollout, t0 + timedelta(seconds=result.wake_in)).notified == 5


def test_no_wake_up_when_the_beat_comes_first():
    artifact("2.0.0")
    devices(15)
    rollout = phased(policy={"rate_per_minute": 10})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None

    result = evaluate(rollout, t0)

    assert result.notified == 10
    assert result.wake_in is None  # 60 s away, the beat every 30 s
    assert fresh(rollout).wake_at is None


def test_no_wake_up_once_every_device_of_the_stage_is_notified():
    artifact("2.0.0")
    devices(2)
    rollout = phased(policy={"rate_per_minute": 10, "rate_burst": 1})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None
    first = evaluate(rollout, t0)

    last = evaluate(rollout, t0 + timedelta(seconds=first.wake_in or 0))

    assert last.notified == 1
    assert last.wake_in is None
    assert evaluate(rollout, t0 + timedelta(seconds=20)).wake_in is None


def test_no_wake_up_for_a_paused_rollout():
    artifact("2.0.0")
    devices(5)
    rollout = phased(policy={"rate_per_minute": 10, "rate_burst": 1})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None
    assert evaluate(rollout, t0).notified == 1
    rollouts.rollout_pause(rollout=fresh(rollout), by=None, reason="looking")

    result = evaluate(rollout, t0 + timedelta(seconds=7))

    assert result.status == RolloutStatus.PAUSED
    assert (result.notified, result.wake_in) == (0, None)


def test_no_wake_up_outside_the_maintenance_window():
    artifact("2.0.0")
    devices(5)
    # open 01:00-02:00 UTC every day
    rollout = phased(
        policy={
            "rate_per_minute": 10,
            "rate_burst": 1,
            "window": {"start": "01:00", "end": "02:00", "timezone": "UTC"},
        }
    )
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day += timedelta(days=1)

    closed = evaluate(rollout, day + timedelta(hours=3))

    assert closed.note == "outside the maintenance window"
    assert (closed.notified, closed.wake_in) == (0, None)


def test_no_wake_up_while_a_stage_bakes():
    # given the first stage notified at once; the next stage's devices are still pending
    artifact("2.0.0")
    devices(10)
    rollout = phased(
        stages=[{"percent": 50, "bake_minutes": 10}, {"percent": 100}],
        policy={"rate_per_minute": 1000},
    )
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None
    first = evaluate(rollout, t0)
    assert first.notified > 0
    assert first.wake_in is None
    commit_all(rollout)

    baking = evaluate(rollout, t0 + timedelta(seconds=5))

    assert baking.note.startswith("stage 1 baking until")
    assert baking.wake_in is None


def test_the_task_schedules_the_wake_up(monkeypatch):
    # given a worker (not eager) and a paced rollout whose stage just started
    monkeypatch.setitem(tasks.rollout_evaluate_task.app.conf, "task_always_eager", False)
    queued: list[tuple[tuple[str], float]] = []
    monkeypatch.setattr(
        tasks.rollout_evaluate_task,
        "apply_async",
        lambda args, countdown: queued.append((args, countdown)),
    )
    artifact("2.0.0")
    devices(5)
    rollout = phased(policy={"rate_per_minute": 10, "rate_burst": 1})

    # when the task evaluates it now
    result = tasks.rollout_evaluate_task(rollout.public_id)

    # then one device went and one evaluation is queued for when the next is due
    assert result["notified"] == 1
    assert queued == [((rollout.public_id,), result["wake_in"])]
    assert 5 < queued[0][1] <= 6.001
    # and an evaluation right after (device events) queues nothing more
    tasks.rollout_evaluate_task(rollout.public_id)
    assert len(queued) == 1


def test_an_eager_task_does_not_recurse_into_the_wake_up(monkeypatch):
    # tasks run eagerly in the tests, as in the embedded default without a worker
    assert tasks.rollout_evaluate_task.app.conf.task_always_eager
    queued: list[object] = []
    monkeypatch.setattr(
        tasks.rollout_evaluate_task, "apply_async", lambda *a, **kw: queued.append(a)
    )
    artifact("2.0.0")
    devices(5)
    rollout = phased(policy={"rate_per_minute": 10, "rate_burst": 1})

    result = tasks.rollout_evaluate_task(rollout.public_id)

    assert result["notified"] == 1
    assert result["wake_in"] is not None
    assert queued == []


# --- the whole stage, at the wake-ups alone -------------------------------------------------


@pytest.mark.parametrize(("n", "rate"), [(25, 10), (100, 1200), (90, 60)])
def test_wake_ups_alone_notify_n_devices_in_n_over_rate(n, rate):
    # given N devices at R a minute with a burst of one, and no device events, no beat
    artifact("2.0.0")
    devices(n)
    rollout = phased(policy={"rate_per_minute": rate, "rate_burst": 1})
    t0 = now = fresh(rollout).stage_started_at
    assert t0 is not None
    assert now is not None

    # when the engine is evaluated only when it asks to be
    evaluations = 0
    while True:
        result = evaluate(rollout, now)
        evaluations += 1
        assert evaluations <= 2 * n, "woken far more often than devices went"
        if result.wake_in is None:
            break
        now += timedelta(seconds=result.wake_in)

    # then every device went, within N / R (a burst of one: (N - 1) / R), never more than
    # R in any 60 s
    times = _times(rollout)
    assert len(times) == n
    assert (times[-1] - t0).total_seconds() <= n / rate * 60 * 1.02 + WAKE_MIN_SECONDS
    assert _busiest_minute(times) <= rate


def test_wake_ups_with_jitter_keep_the_pace_without_a_tight_loop():
    artifact("2.0.0")
    devices(30)
    rollout = phased(policy={"rate_per_minute": 20, "rate_burst": 1, "jitter": 0.5})
    t0 = now = fresh(rollout).stage_started_at
    assert t0 is not None
    assert now is not None
    evaluations = 0
    while (result := evaluate(rollout, now)).wake_in is not None:
        evaluations += 1
        now += timedelta(seconds=result.wake_in)

    times = _times(rollout)
    assert len(times) == 30
    assert evaluations <= 31
    # a device held back by the draw waits for the next one to fall due: one interval late
    assert (times[-1] - t0).total_seconds() <= 30 / 20 * 60 + 3 + WAKE_MIN_SECONDS
    assert _busiest_minute(times) <= 20


def test_evaluations_after_events_do_not_multiply_the_wake_ups():
    # given a paced rollout and device events triggering evaluations every 0.7 s,
    # each scheduled wake-up run at its time (a fake clock and a queue of pending ones)
    n, rate = 40, 30
    artifact("2.0.0")
    devices(n)
    rollout = phased(policy={"rate_per_minute": rate, "rate_burst": 1})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None
    pending: list[datetime] = []
    most_pending = woken = 0
    next_event = t0
    while len(_times(rollout)) < n:
        assert next_event - t0 < timedelta(seconds=n / rate * 60 + 10), "stalled"
        if pending and pending[0] <= next_event:
            now = heapq.heappop(pending)
            woken += 1
        else:
            now, next_event = next_event, next_event + timedelta(seconds=0.7)
        result = evaluate(rollout, now)
        if result.wake_in is not None:
            heapq.heappush(pending, now + timedelta(seconds=result.wake_in))
        most_pending = max(most_pending, len(pending))

    # then one chain of wake-ups ran (an event within WAKE_EPSILON of a due wake-up may
    # ask for the next before that one ran: two pending, briefly), and the pace held
    assert most_pending <= 2
    assert woken <= n + 5
    times = _times(rollout)
    assert (times[-1] - t0).total_seconds() <= n / rate * 60 * 1.02 + WAKE_MIN_SECONDS
    assert _busiest_minute(times) <= rate
