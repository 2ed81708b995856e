"""Celery tasks of the model registry: small, idempotent, one service call each."""

import logging
import threading
import time
from dataclasses import dataclass

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, transaction

from ota import engine, rollout_selectors
from ota.repository import repository_refresh
from ota.tracking import tracking_news_prune

log = logging.getLogger(__name__)


@shared_task
def tuf_refresh_task() -> list[str]:
    """Re-sign snapshot/timestamp before they expire so frozen devices notice."""
    return repository_refresh()


# --- rollouts ---------------------------------------------------------------------------------


@shared_task
def rollout_evaluate_task(rollout_id: str) -> dict[str, object]:
    """Evaluate one rollout (``r-<n>``); safe to run twice or concurrently (row lock).

    When the evaluation left work over (more devices due than one evaluation notifies, a
    roll-back larger than one batch), the next one is queued at once, without a countdown:
    a one-second pause per thousand devices would be most of a large stage's notification
    time in the rollout benchmark. When the pace holds devices
    back, one is queued for when the next falls due (``wake_in``), so a paced rollout
    keeps its rate between beats whether device events come or not. Not when tasks run
    eagerly: a countdown would be ignored and the evaluation would recurse here and now
    (the embedded quick start runs a real worker, which gets its wake-ups).
    """
    result = engine.rollout_evaluate(rollout_id=rollout_id)
    if result.more:
        rollout_evaluate_task.delay(rollout_id)
    elif result.wake_in is not None and not rollout_evaluate_task.app.conf.task_always_eager:
        rollout_evaluate_task.apply_async((rollout_id,), countdown=result.wake_in)
    return result.to_dict()


@shared_task
def rollouts_tick_task() -> int:
    """The beat: queue an evaluation of every rollout that may have something to do
    (start times, bake times, timeouts, pacing and windows move with the clock), and drop
    the tracking news of rollouts that ended (``ota.tracking``)."""
    tracking_news_prune()
    ids = [rollout.public_id for rollout in rollout_selectors.rollouts_to_evaluate()]
    for rollout_id in ids:
        try:
            rollout_evaluate_task.delay(rollout_id)
        except Exception:
            # Eager (embedded) runs the evaluation right here: one rollout's failure must not
            # keep the others from being evaluated.
            log.exception("evaluating %s failed", rollout_id)
    return len(ids)


# Evaluations queued for device events: at most one per rollout per this interval from one
# process (the bridge stores events in batches, several a second under load, and each batch
# queued one). An event never waits longer than this for its evaluation. Without it a paced
# rollout of 20 devices a second was evaluated as often as the bridge committed.
#
# One exception, the stage hand-over: the batch after which this process has stored as many
# decisive events for a rollout as the engine has issued envelopes (``issued_count``) may be
# the last of a stage, and its evaluation is queued at once, not at the end of the interval,
# where it waited up to the interval at every stage (docs/rollouts.md). Once per
# ``issued_count``: a device counted twice (``failed`` then ``rolled_back``) can make it
# early, never repeated. With several bridges each sees a share and the interval applies;
# so it does for the rollouts under way when a bridge restarts (its count starts again).
def _event_interval() -> float:
    """``FLEET_ROLLOUT_EVENT_EVALUATION_MS`` in seconds."""
    return float(settings.FLEET_ROLLOUT_EVENT_EVALUATION_MS) / 1000


@dataclass
class _Events:
    """What this process knows of one rollout's device events."""

    runs_at: float | None = None  # when the last evaluation queued for them runs
    stored: int = 0  # decisive events this process stored
    issued_seen: int = 0  # the rollout's issued_count, as last read
    hand_over_for: int | None = None  # the issued_count an at-once evaluation was queued for


_events: dict[str, _Events] = {}  # by rollout id
_event_lock = threading.Lock()


def _queue_for_events(rollout_id: str, decisive: int = 1) -> None:
    """Queue an evaluation that runs after now: at once, or (within the interval of the
    last one) at the end of that interval, or none if one is already queued to run later;
    at once whenever ``decisive`` more events may have finished what was issued."""
    if rollout_evaluate_task.app.conf.task_always_eager:
        rollout_evaluate_task.delay(rollout_id)  # runs here and now: nothing to spare
        return
    hand_over = _may_have_finished(rollout_id, decisive)
    interval = _event_interval()
    now = time.monotonic()
    with _event_lock:
        known = _known(rollout_id, now)
        last = known.runs_at
        if not hand_over and last is not None and last > now:
            return  # queued to run after these events committed: it will see them
        at = now if hand_over or last is None else max(now, last + interval)
        # A hand-over queued at once leaves the one queued for later where it was.
        known.runs_at = at if last is None else max(at, last)
    if at <= now:
        rollout_evaluate_task.delay(rollout_id)
    else:
        rollout_evaluate_task.apply_async((rollout_id,), countdown=at - now)


def _known(rollout_id: str, now: float) -> _Events:
    """This rollout's entry (under ``_event_lock``); rollouts quiet for a minute are
    forgotten once a thousand are known."""
    known = _events.get(rollout_id)
    if known is None:
        if len(_events) >= 1000:
            for key in [k for k, v in _events.items() if (v.runs_at or 0) < now - 60]:
                del _events[key]
        known = _events[rollout_id] = _Events()
    return known


def _may_have_finished(rollout_id: str, decisive: int) -> bool:
    """Whether this process has now stored a decisive event for every envelope issued (the
    first time for this ``issued_count``). The count only grows, so it is read again only
    once the events have caught up with the value last read: rarely, not every batch."""
    with _event_lock:
        known = _known(rollout_id, time.monotonic())
        known.stored += decisive
        stored = known.stored
        if stored < known.issued_seen:
            return False
    try:
        issued = rollout_selectors.rollout_issued_count(rollout_id)
    except DatabaseError:
        log.warning("%s: issued count unreadable, evaluating at the interval", rollout_id)
        return False  # the batch has committed: its evaluation is still queued below
    if issued is None:
        return False
    with _event_lock:
        known.issued_seen = issued
        if stored < issued or known.hand_over_for == issued:
            return False
        known.hand_over_for = issued
        return True


# Phases after which a rollout may decide something (a device finished); progress events
# only move timeouts, which the beat checks.
_DECISIVE_PHASES = frozenset({"committed", "failed", "rejected", "rolled_back"})


class _EventsCommitted:
    """The on-commit callback of one transaction's decisive events of one rollout."""

    def __init__(self, rollout_id: str) -> None:
        self.rollout_id = rollout_id
        self.decisive = 1

    def __call__(self) -> None:
        _queue_for_events(self.rollout_id, self.decisive)


def rollout_evaluate_queue(rollout_id: str) -> object:
    """Queue one evaluation of ``rollout_id`` (what an operator's status change asks for,
    registered with ota.rollouts by ota/apps.py); the task is looked up at each call."""
    return rollout_evaluate_task.delay(rollout_id)


def rollout_evaluate_on_commit(*, rollout_id: str, phase: str) -> None:
    """Queue an evaluation of ``rollout_id`` once the current transaction commits.

    Called for every stored device event; only decisive phases of our own rollout ids
    count, and one transaction (the bridge stores events in batches) queues at most one
    evaluation per rollout, counting its decisive events. ``robust``: a failure to queue
    must not fail the bridge's batch, which has committed already; the beat evaluates the
    rollout anyway.
    """
    if phase not in _DECISIVE_PHASES or rollout_selectors.rollout_pk(rollout_id) is None:
        return
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        # Django keeps the pending callbacks in run_on_commit (savepoint ids, callback,
        # robust); looking there rather than in a set of our own is what stays right
        # when a transaction rolls back and its callbacks are dropped.
        for pending in connection.run_on_commit:
            callback = pending[1]
            if isinstance(callback, _EventsCommitted) and callback.rollout_id == rollout_id:
                callback.decisive += 1
                return
    transaction.on_commit(_EventsCommitted(rollout_id), robust=True)
