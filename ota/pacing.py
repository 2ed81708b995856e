"""How many devices a rollout may notify now, and when the next one falls due: rate
limit, exponential growth, jitter and the maintenance window. Pure functions of their
arguments (the engine reads the counts).
"""

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ota.rollout_config import DAYS, Policy, Window

RATE_WINDOW = timedelta(seconds=60)


def current_rate(policy: Policy, *, succeeded: int, notified: int) -> float:
    """Devices per minute now: AWS IoT Jobs' exponential rate.

    The rate starts at ``rate_per_minute`` and is multiplied by ``rate_growth_factor``
    each time another ``rate_growth_every`` devices have succeeded (or been notified),
    capped at ``rate_max_per_minute``. Counting increases as ``count // every`` instead of
    keeping a "since the last increase" counter makes it a function of counts the
    engine can always recompute, so no state can drift.
    """
    if policy.rate_growth_factor <= 1 or policy.rate_growth_every <= 0:
        return policy.rate_per_minute
    count = succeeded if policy.rate_growth_on == "succeeded" else notified
    steps = count // policy.rate_growth_every
    # Past the cap further growth is moot; bounding the exponent keeps the float finite.
    cap_steps = math.ceil(
        math.log(policy.rate_max_per_minute / policy.rate_per_minute)
        / math.log(policy.rate_growth_factor)
    )
    rate = policy.rate_per_minute * policy.rate_growth_factor ** min(steps, cap_steps)
    return min(rate, policy.rate_max_per_minute)


def pacing_since(*, now: datetime, started: Sequence[datetime | None]) -> datetime:
    """Where the smoothing counts from: the latest of ``started`` (the current stage's
    start, the last resume), else one minute ago (``RATE_WINDOW``)."""
    return max((at for at in started if at is not None), default=now - RATE_WINDOW)


def notify_budget(
    *,
    rate_per_minute: float,
    notified_last_minute: int,
    seconds_since: float,
    notified_since: int,
    burst: float | None = None,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> int:
    """How many devices to notify in this evaluation.

    Two limits. The hard one: never more than ``rate_per_minute`` devices in any 60 s
    (``notified_last_minute`` counts the sliding window). The smoothing one: from
    ``pacing_since()``, ``seconds_since`` ago, ``burst`` devices (default: a minute's
    worth, the rate) are due at once and then one every 60 / rate seconds; the budget is
    what is due and not yet notified (``notified_since``). Because the budget is counted
    from that start rather than accrued since the last release, no fraction of a device
    is lost between evaluations: whether evaluations come with each batch of device events
    or only with the beat, N devices after the burst take (N - burst) / rate minutes.
    After a stall (a maintenance window that was closed, a promotion re-targeting
    devices) what fell due meanwhile goes out as fast as the hard limit lets it.
    ``jitter`` scales the release by a random factor in [1 - jitter, 1] so rollouts
    evaluated on the same beat do not release in lockstep (what it holds back stays due).
    """
    hard = math.floor(rate_per_minute) - notified_last_minute
    if hard <= 0:
        return 0
    initial = rate_per_minute if burst is None else burst
    due = initial + rate_per_minute * max(seconds_since, 0.0) / 60.0 - notified_since
    if jitter > 0:
        # Not security-relevant: spreading load only.
        due *= (rng or random.Random()).uniform(1.0 - jitter, 1.0)  # noqa: S311
    return max(0, min(hard, math.floor(due)))


@dataclass(frozen=True, kw_only=True, slots=True)
class PaceCounts:
    """What the engine counts of a rollout's devices before it paces a batch."""

    succeeded: int  # devices that succeeded
    notified: int  # devices notified at least once
    last_minute: int  # notifications within the last ``RATE_WINDOW``
    since: int  # notifications since ``pacing_since()``

    def after(self, *, issued: int, first: int) -> "PaceCounts":
        """The counts once ``issued`` more devices were notified, ``first`` of them for the
        first time."""
        return PaceCounts(
            succeeded=self.succeeded,
            notified=self.notified + first,
            last_minute=self.last_minute + issued,
            since=self.since + issued,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Pace:
    """One evaluation's pace: the rate, how many devices to notify, and whether the
    per-evaluation cap cut that number (so more are due at once)."""

    rate: float
    budget: int
    capped: bool


def pace(
    policy: Policy,
    counts: PaceCounts,
    *,
    seconds_since: float,
    cap_first: int,
    cap_more: int,
    rng: random.Random | None = None,
) -> Pace:
    """``notify_budget`` at ``current_rate``, capped per evaluation: ``cap_first`` while
    nobody has been notified since ``pacing_since()`` (the first evaluation of a stage),
    else ``cap_more``."""
    rate = current_rate(policy, succeeded=counts.succeeded, notified=counts.notified)
    budget = notify_budget(
        rate_per_minute=rate,
        notified_last_minute=counts.last_minute,
        seconds_since=seconds_since,
        notified_since=counts.since,
        burst=policy.rate_burst,
        jitter=policy.jitter,
        rng=rng,
    )
    cap = cap_more if counts.since else cap_first
    return Pace(rate=rate, budget=min(budget, cap), capped=budget > cap)


def window_leaving(*, rate_per_minute: float, notified_last_minute: int) -> int:
    """How many of the last minute's notifications must leave the sliding window before
    the hard limit lets one more device go (0: it lets one go now). The engine reads when
    the last of them leaves for ``next_due_in``'s ``window_frees_in``."""
    return max(0, notified_last_minute - math.floor(rate_per_minute) + 1)


# At most two wake-ups a second: at a high rate each releases what fell due meanwhile
# (rate / 120 devices), the same pace in slightly larger steps. One wake-up per device
# cost, at 1 200 a minute, more CPU in the worker and the database than the devices'
# whole update traffic in the bridge.
WAKE_MIN_SECONDS = 0.5
# Aim a millisecond late: a wake-up a hair early (clock rounding) finds nobody due yet and
# has to wake again.
_WAKE_MARGIN_SECONDS = 0.001


def next_due_in(
    *,
    rate_per_minute: float,
    notified_last_minute: int,
    seconds_since: float,
    notified_since: int,
    burst: float | None = None,
    jitter: float = 0.0,
    window_frees_in: float | None = None,
    horizon: float,
) -> float | None:
    """Seconds until ``notify_budget`` (the same counts, taken after this evaluation's
    notifications) allows one more device; None when that is beyond ``horizon`` (the beat
    comes first) or unknown.

    The smoothing limit: the first ``t`` with ``initial + rate * (seconds_since + t) / 60 -
    notified_since >= 1``. With ``jitter`` the target is ``1 / (1 - jitter)``, when no random
    factor can hold the device back; aiming at 1 would find it held back almost surely and
    wake every ``WAKE_MIN_SECONDS`` until the draw lets it go. The hard limit, when the last
    60 s are full: ``window_frees_in``, the seconds until enough of their notifications
    leave the window (the engine reads it). The later of the two, at least
    ``WAKE_MIN_SECONDS``.
    """
    initial = rate_per_minute if burst is None else burst
    target = 1.0 / (1.0 - jitter) if jitter > 0 else 1.0
    wait = (target + notified_since - initial) * 60.0 / rate_per_minute - max(seconds_since, 0.0)
    if math.floor(rate_per_minute) - notified_last_minute <= 0:
        if window_frees_in is None:
            return None
        wait = max(wait, window_frees_in)
    wait = max(WAKE_MIN_SECONDS, wait + _WAKE_MARGIN_SECONDS)
    return None if wait > horizon else wait


def window_open(window: Window | None, now: datetime) -> bool:
    """Whether ``now`` (aware) lies inside the maintenance window (always, without one)."""
    if window is None:
        return True
    local = now.astimezone(ZoneInfo(window.timezone))
    day = DAYS[local.weekday()]
    yesterday = DAYS[(local.weekday() - 1) % 7]
    clock = local.time().replace(tzinfo=None)
    start, end = window.start, window.end
    if start == end:
        return day in window.days
    if start < end:
        return day in window.days and start <= clock < end
    # Over midnight: opened today (after start) or yesterday (before end).
    return (day in window.days and clock >= start) or (yesterday in window.days and clock < end)
