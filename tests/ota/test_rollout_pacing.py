"""Pacing: at most N devices a minute, exponential growth on success, jitter, and the
maintenance window in its own time zone - the pure functions, then the engine obeying them."""

import random
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from rollout_helpers import (
    artifact,
    commit_all,
    devices,
    evaluate,
    fresh,
    later,
    phased,
    rows,
    use_own_director_key,
)

from fleet.errors import ServiceError
from ota.pacing import (
    WAKE_MIN_SECONDS,
    PaceCounts,
    current_rate,
    next_due_in,
    notify_budget,
    pace,
    pacing_since,
    window_leaving,
    window_open,
)
from ota.rollout_config import Policy, Window


def _policy(**fields):
    return Policy.from_dict(fields)


# --- rate ---------------------------------------------------------------------------------


def test_constant_rate_without_growth():
    policy = _policy(rate_per_minute=10)
    assert current_rate(policy, succeeded=10_000, notified=10_000) == 10


def test_rate_grows_by_the_factor_each_time_the_criterion_is_met():
    # AWS IoT Jobs: base 10/min, x2 every 50 succeeded devices, at most 100/min
    policy = _policy(
        rate_per_minute=10, rate_growth_factor=2, rate_growth_every=50, rate_max_per_minute=100
    )
    assert current_rate(policy, succeeded=0, notified=500) == 10
    assert current_rate(policy, succeeded=49, notified=500) == 10
    assert current_rate(policy, succeeded=50, notified=500) == 20
    assert current_rate(policy, succeeded=149, notified=500) == 40
    assert current_rate(policy, succeeded=150, notified=500) == 80
    assert current_rate(policy, succeeded=200, notified=500) == 100  # capped
    assert current_rate(policy, succeeded=10**9, notified=500) == 100


def test_rate_can_grow_on_notified_devices():
    policy = _policy(
        rate_per_minute=10,
        rate_growth_factor=1.5,
        rate_growth_every=20,
        rate_growth_on="notified",
        rate_max_per_minute=1000,
    )
    assert current_rate(policy, succeeded=0, notified=40) == pytest.approx(22.5)


def test_growth_needs_a_criterion():
    with pytest.raises(ServiceError):
        _policy(rate_growth_factor=2)


# --- budget ---------------------------------------------------------------------------------


def test_budget_never_exceeds_the_rate_in_any_minute():
    # by default a minute's worth may go at once when a stage starts
    assert (
        notify_budget(rate_per_minute=10, notified_last_minute=0, seconds_since=0, notified_since=0)
        == 10
    )
    # much is due, but 10 went out in the last 60 s
    assert (
        notify_budget(
            rate_per_minute=10, notified_last_minute=10, seconds_since=90, notified_since=10
        )
        == 0
    )
    assert (
        notify_budget(
            rate_per_minute=10, notified_last_minute=7, seconds_since=60, notified_since=10
        )
        == 3
    )


def test_budget_is_what_fell_due_since_the_stage_started():
    # a burst of one, then one every 6 s at 10/min
    def budget(seconds: float, sent: int) -> int:
        return notify_budget(
            rate_per_minute=10,
            notified_last_minute=sent,
            seconds_since=seconds,
            notified_since=sent,
            burst=1,
        )

    assert budget(0, 0) == 1
    assert budget(5, 1) == 0
    assert budget(6, 1) == 1
    # evaluations 4 s apart: the 2/3 of a device one could not send is not lost
    assert budget(8, 2) == 0
    assert budget(12, 2) == 1
    assert budget(30, 3) == 3
    assert (
        notify_budget(
            rate_per_minute=120,
            notified_last_minute=0,
            seconds_since=15,
            notified_since=0,
            burst=1,
        )
        == 31
    )


def test_pacing_counts_from_the_stage_start_or_the_last_resume():
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    stage = now - timedelta(minutes=20)
    resumed = now - timedelta(minutes=5)
    assert pacing_since(now=now, started=[stage, None]) == stage
    assert pacing_since(now=now, started=[stage, resumed]) == resumed
    assert pacing_since(now=now, started=[None, None]) == now - timedelta(seconds=60)


# --- when the next device falls due -------------------------------------------------------


def test_next_due_is_when_the_smoothing_budget_reaches_one():
    # 10/min, a burst of one: the first device went at the stage start, the next is due 6 s on
    def wait(seconds: float, sent: int) -> float | None:
        return next_due_in(
            rate_per_minute=10,
            notified_last_minute=sent,
            seconds_since=seconds,
            notified_since=sent,
            burst=1,
            horizon=30,
        )

    assert wait(0, 1) == pytest.approx(6, abs=0.002)
    assert wait(4, 1) == pytest.approx(2, abs=0.002)
    assert wait(8, 2) == pytest.approx(4, abs=0.002)
    # ... which is where notify_budget says one device is due, and not a moment before
    for seconds, sent in [(0, 1), (4, 1), (8, 2), (13.7, 3), (50.5, 9)]:
        at = seconds + (wait(seconds, sent) or 0)
        args: dict[str, Any] = {"rate_per_minute": 10, "notified_last_minute": sent, "burst": 1}
        assert notify_budget(seconds_since=at, notified_since=sent, **args) == 1
        assert notify_budget(seconds_since=at - 0.002, notified_since=sent, **args) == 0


def test_next_due_waits_for_the_sliding_window_when_the_minute_is_full():
    # 10/min and ten went out in the last 60 s: smoothing has long been due (the stage
    # fell behind), the hard limit holds until the oldest leaves the window in 20 s
    assert next_due_in(
        rate_per_minute=10,
        notified_last_minute=10,
        seconds_since=600,
        notified_since=10,
        window_frees_in=20,
        horizon=30,
    ) == pytest.approx(20, abs=0.002)
    # the later of the two: the window frees in 1 s, smoothing is due in 6 s
    assert next_due_in(
        rate_per_minute=10,
        notified_last_minute=10,
        seconds_since=0,
        notified_since=1,
        burst=1,
        window_frees_in=1,
        horizon=30,
    ) == pytest.approx(6, abs=0.002)
    # a full window of unknown age: no guess
    assert (
        next_due_in(
            rate_per_minute=10,
            notified_last_minute=10,
            seconds_since=600,
            notified_since=10,
            horizon=30,
        )
        is None
    )


def test_no_wake_up_beyond_the_beat():
    # a minute's worth went at once: the next one only when the first leaves the window
    assert (
        next_due_in(
            rate_per_minute=10,
            notified_last_minute=10,
            seconds_since=0,
            notified_since=10,
            window_frees_in=60,
            horizon=30,
        )
        is None
    )
    # one a minute: the beat comes before the next is due
    slow = {"rate_per_minute": 1, "notified_last_minute": 0, "burst": 1, "horizon": 30}
    assert next_due_in(seconds_since=0, notified_since=1, **slow) is None
    assert next_due_in(seconds_since=40, notified_since=1, **slow) == pytest.approx(20, abs=0.002)


def test_next_due_is_never_sooner_than_the_minimum_step():
    # already due (a device was refused, or a fast rate): wake soon, not in a tight loop
    assert (
        next_due_in(
            rate_per_minute=6000,
            notified_last_minute=1,
            seconds_since=0,
            notified_since=1,
            burst=1,
            horizon=30,
        )
        == WAKE_MIN_SECONDS
    )


def test_with_jitter_next_due_is_when_no_draw_can_hold_the_device_back():
    # jitter 0.5: the release is floor(due * [0.5, 1]), sure to be 1 once 2 are due
    wait = next_due_in(
        rate_per_minute=60,
        notified_last_minute=1,
        seconds_since=0,
        notified_since=1,
        burst=1,
        jitter=0.5,
        horizon=30,
    )
    assert wait is not None
    assert wait == pytest.approx(2, abs=0.002)
    rng = random.Random(3)  # noqa: S311 - reproducible test data
    for _ in range(100):
        assert (
            notify_budget(
                rate_per_minute=60,
                notified_last_minute=1,
                seconds_since=wait,
                notified_since=1,
                burst=1,
                jitter=0.5,
                rng=rng,
            )
            >= 1
        )


def test_burst_validation():
    assert _policy().rate_burst is None
    assert _policy(rate_burst=1).rate_burst == 1
    for bad in (0, 1.5, "1"):
        with pytest.raises(ServiceError):
            _policy(rate_burst=bad)


def test_jitter_scales_the_release_down_within_bounds():
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    budgets = [
        notify_budget(
            rate_per_minute=100,
            notified_last_minute=0,
            seconds_since=0,
            notified_since=0,
            jitter=0.5,
            rng=rng,
        )
        for _ in range(200)
    ]
    assert min(budgets) >= 50
    assert max(budgets) <= 100
    assert len(set(budgets)) > 10  # it does vary


# --- maintenance window ----------------------------------------------------------------------


def _window(**fields):
    return Window.from_dict(fields)


def test_window_in_its_time_zone():
    # 01:00-05:00 in Berlin, weekdays; 2026-01-14 is a Wednesday (CET = UTC+1)
    window = _window(
        days=["mon", "tue", "wed", "thu", "fri"],
        start="01:00",
        end="05:00",
        timezone="Europe/Berlin",
    )
    assert window_open(window, datetime(2026, 1, 14, 0, 0, tzinfo=UTC))  # 01:00 local
    assert window_open(window, datetime(2026, 1, 14, 3, 59, tzinfo=UTC))  # 04:59 local
    assert not window_open(window, datetime(2026, 1, 14, 4, 0, tzinfo=UTC))  # 05:00 local
    assert not window_open(window, datetime(2026, 1, 13, 23, 59, tzinfo=UTC))  # 00:59 local
    assert not window_open(window, datetime(2026, 1, 17, 1, 0, tzinfo=UTC))  # Saturday


def test_window_follows_daylight_saving_time():
    window = _window(start="02:30", end="03:30", timezone="America/New_York")
    # winter: EST = UTC-5, so 02:30 local is 07:30 UTC; summer: EDT = UTC-4, 06:30 UTC
    assert window_open(window, datetime(2026, 1, 15, 7, 45, tzinfo=UTC))
    assert not window_open(window, datetime(2026, 1, 15, 6, 45, tzinfo=UTC))
    assert window_open(window, datetime(2026, 7, 15, 6, 45, tzinfo=UTC))
    assert not window_open(window, datetime(2026, 7, 15, 7, 45, tzinfo=UTC))


def test_window_over_midnight_belongs_to_the_day_it_opens():
    # Fridays 22:00 to Saturday 04:00 in Tokyo (UTC+9, no DST); 2026-01-16 is a Friday
    window = _window(days=["fri"], start="22:00", end="04:00", timezone="Asia/Tokyo")
    assert window_open(window, datetime(2026, 1, 16, 13, 0, tzinfo=UTC))  # Fri 22:00
    assert window_open(window, datetime(2026, 1, 16, 18, 59, tzinfo=UTC))  # Sat 03:59
    assert not window_open(window, datetime(2026, 1, 16, 19, 0, tzinfo=UTC))  # Sat 04:00
    assert not window_open(window, datetime(2026, 1, 15, 18, 0, tzinfo=UTC))  # Fri 03:00
    assert not window_open(window, datetime(2026, 1, 17, 13, 0, tzinfo=UTC))  # Sat 22:00


def test_no_window_is_always_open_and_equal_times_mean_all_day():
    assert window_open(None, datetime(2026, 1, 1, tzinfo=UTC))
    all_sunday = _window(days=["sun"], start="00:00", end="00:00", timezone="UTC")
    assert window_open(all_sunday, datetime(2026, 1, 18, 23, 59, tzinfo=UTC))
    assert not window_open(all_sunday, datetime(2026, 1, 19, 0, 0, tzinfo=UTC))


def test_window_validation():
    for bad in (
        {"start": "25:00", "end": "01:00"},
        {"start": "01:00", "end": "02:00", "timezone": "Mars/Olympus"},
        {"start": "01:00", "end": "02:00", "days": ["funday"]},
    ):
        with pytest.raises(ServiceError):
            _window(**bad)
    assert _window(start="01:00", end="02:00").start == time(1, 0)


# --- one evaluation's pace (what the engine's _notify computes from its counts) ------------


def _counts(*, succeeded=0, notified=0, last_minute=0, since=0):
    return PaceCounts(succeeded=succeeded, notified=notified, last_minute=last_minute, since=since)


def test_pace_caps_the_first_evaluation_of_a_stage_lower():
    policy = _policy(rate_per_minute=5000)
    first = pace(policy, _counts(), seconds_since=0, cap_first=100, cap_more=1000)
    assert (first.rate, first.budget, first.capped) == (5000, 100, True)
    # once some were notified since the stage started, the larger cap applies
    more = pace(
        policy, _counts(notified=100, since=100), seconds_since=0, cap_first=100, cap_more=1000
    )
    assert (more.budget, more.capped) == (1000, True)


def test_pace_under_its_cap_is_the_budget_and_not_capped():
    policy = _policy(rate_per_minute=10)
    for counts, seconds, budget in (
        (_counts(), 0, 10),  # a minute's worth at once
        (_counts(notified=10, last_minute=10, since=10), 30, 0),  # the minute is full
        (_counts(notified=10, last_minute=7, since=10), 60, 3),
    ):
        paced = pace(policy, counts, seconds_since=seconds, cap_first=10, cap_more=1000)
        assert (paced.budget, paced.capped) == (budget, False)


def test_pace_uses_the_grown_rate():
    policy = _policy(
        rate_per_minute=10, rate_growth_factor=2, rate_growth_every=5, rate_max_per_minute=100
    )
    paced = pace(
        policy,
        _counts(succeeded=10, notified=20, since=20),
        seconds_since=600,
        cap_first=1000,
        cap_more=1000,
    )
    assert paced.rate == current_rate(policy, succeeded=10, notified=20) == 40
    assert paced.budget == 40  # the hard limit: 40 in any minute


def test_pace_draws_the_jitter_as_notify_budget_does():
    policy = _policy(rate_per_minute=100, jitter=0.5)
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    paced = pace(policy, _counts(), seconds_since=0, cap_first=1000, cap_more=1000, rng=rng)
    expected = notify_budget(
        rate_per_minute=100,
        notified_last_minute=0,
        seconds_since=0,
        notified_since=0,
        jitter=0.5,
        rng=random.Random(7),  # noqa: S311 - the same draw
    )
    assert paced.budget == expected
    assert 50 <= paced.budget < 100


def test_counts_after_a_batch():
    before = _counts(succeeded=3, notified=10, last_minute=4, since=6)
    assert before.after(issued=5, first=2) == _counts(
        succeeded=3, notified=12, last_minute=9, since=11
    )


def test_window_leaving_is_how_many_must_leave_the_last_minute():
    assert window_leaving(rate_per_minute=10, notified_last_minute=0) == 0
    assert window_leaving(rate_per_minute=10, notified_last_minute=9) == 0
    assert window_leaving(rate_per_minute=10, notified_last_minute=10) == 1
    assert window_leaving(rate_per_minute=10.9, notified_last_minute=13) == 4


# --- the engine obeys them ------------------------------------------------------------------


@pytest.fixture
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


@pytest.mark.django_db
@pytest.mark.usefixtures("_keys")
def test_engine_notifies_at_most_the_rate_per_minute():
    artifact("2.0.0")
    devices(25)
    rollout = phased(policy={"rate_per_minute": 10})
    t0 = later()

    assert evaluate(rollout, t0).notified == 10
    # evaluations within the minute (device events, the beat) add nobody
    assert evaluate(rollout, t0 + timedelta(seconds=20)).notified == 0
    assert evaluate(rollout, t0 + timedelta(seconds=59)).notified == 0
    # a minute on, the next ten
    assert evaluate(rollout, t0 + timedelta(seconds=61)).notified == 10
    assert evaluate(rollout, t0 + timedelta(seconds=122)).notified == 5
    # lowest buckets first
    order = sorted(rows(rollout), key=lambda r: (r.notified_at, r.bucket))
    assert [r.bucket for r in order] == sorted(r.bucket for r in order)


@pytest.mark.django_db
@pytest.mark.usefixtures("_keys")
def test_engine_rate_grows_as_devices_succeed():
    artifact("2.0.0")
    devices(40)
    rollout = phased(
        policy={
            "rate_per_minute": 5,
            "rate_growth_factor": 2,
            "rate_growth_every": 5,
            "rate_max_per_minute": 20,
        }
    )
    t0 = later()
    assert evaluate(rollout, t0).notified == 5
    commit_all(rollout)
    # 5 succeeded: the rate doubles to 10
    assert evaluate(rollout, t0 + timedelta(seconds=61)).notified == 10
    commit_all(rollout)
    # 15 succeeded: x2 three times, capped at 20
    assert evaluate(rollout, t0 + timedelta(seconds=122)).notified == 20


def _paced(rollout, start, seconds, every):
    """Evaluate every ``every`` seconds and at ``seconds``; the notification times."""
    for i in range(int(seconds / every) + 1):
        evaluate(rollout, start + timedelta(seconds=i * every))
    evaluate(rollout, start + timedelta(seconds=seconds))
    return sorted(r.notified_at for r in rows(rollout) if r.notified_at is not None)


def _busiest_minute(times):
    return max(sum(1 for t in times if at - timedelta(seconds=60) < t <= at) for at in times)


@pytest.mark.django_db
@pytest.mark.usefixtures("_keys")
def test_a_burst_of_one_spreads_the_stage_evenly():
    artifact("2.0.0")
    devices(25)
    rollout = phased(policy={"rate_per_minute": 10, "rate_burst": 1})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None

    assert evaluate(rollout, t0).notified == 1  # not a minute's worth at once
    assert evaluate(rollout, t0 + timedelta(seconds=3)).notified == 0
    assert evaluate(rollout, t0 + timedelta(seconds=13)).notified == 2
    assert evaluate(rollout, t0 + timedelta(seconds=59)).notified == 7
    # ten in the last minute: nobody more until the first ones leave the window
    assert evaluate(rollout, t0 + timedelta(seconds=59.5)).notified == 0
    assert evaluate(rollout, t0 + timedelta(seconds=70)).notified == 1
    assert _busiest_minute(sorted(r.notified_at for r in rows(rollout) if r.notified_at)) == 10


@pytest.mark.django_db
@pytest.mark.usefixtures("_keys")
@pytest.mark.parametrize("every", [1, 4, 7, 30])
def test_the_rate_holds_whatever_the_evaluations_rhythm(every):
    # given 10/min and evaluations every `every` seconds (device events, or only the beat)
    artifact("2.0.0")
    devices(40)
    rollout = phased(policy={"rate_per_minute": 10, "rate_burst": 1})
    t0 = fresh(rollout).stage_started_at
    assert t0 is not None
    # when the engine runs for three minutes
    times = _paced(rollout, t0, 180, every)
    # then 1 + 10 a minute went out (a fraction of a device is never lost between
    # evaluations), never more than 10 in any minute: a device sent late by the rhythm can
    # make the hard limit hold the last one back until the next evaluation
    assert 30 <= len(times) <= 31
    assert _busiest_minute(times) <= 10


@pytest.mark.django_db
@pytest.mark.usefixtures("_keys")
def test_engine_notifies_no_new_device_outside_the_window():
    artifact("2.0.0")
    devices(5)
    # open 01:00-02:00 UTC every day
    rollout = phased(policy={"window": {"start": "01:00", "end": "02:00", "timezone": "UTC"}})
    day = later().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day += timedelta(days=1)

    closed = evaluate(rollout, day + timedelta(hours=3))
    assert closed.notified == 0
    assert closed.note == "outside the maintenance window"
    assert evaluate(rollout, day + timedelta(hours=1, minutes=5)).notified == 5
