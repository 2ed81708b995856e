"""Tracking news: which devices in flight may have moved since a rollout's last evaluation.

The rollout engine tracks a device in flight from its update events and its reported state
(``ota.engine._track``). Finding the few that moved among thousands in flight takes a
query over all of them at every evaluation, several a second: the costliest of the
rollout benchmark's PostgreSQL statements. Instead, whatever stores an event or a report
(``fleet.reports``) also records, in its own transaction, one row of news per rollout in
which the device is in flight (or timed out), and the evaluation takes the news of its
rollout: so it
sees an event exactly when it sees the news of it, and news it did not see stays for the
next one. Timeouts, which no message announces, are found by a full pass every
``ota.engine.TRACK_FULL_EVERY``.
"""

from collections.abc import Collection

from django.db import connection

from fleet.bulk import delete_returning, filter_in
from ota.models import TRACKED, Rollout, RolloutDevice, RolloutStatus, TrackingNews

# Rollouts the engine evaluates (tracks, runs or rolls back), and so take their news.
EVALUATED = (RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.ABORTED)


def tracking_news_record(*, device_pks: Collection[int]) -> None:
    """News for every rollout in which one of these devices is in flight or timed out (one
    statement, in the caller's transaction): they stored an event or a report. A device
    that timed out and comes back is news too: its success replaces the timeout."""
    pks = sorted(set(device_pks))
    if not pks:
        return
    # Through the partial index rolloutdevice_tracked, whose condition this is.
    tracked = filter_in(RolloutDevice.objects.filter(state__in=TRACKED), "device_id", pks)
    keys = tracked.order_by().values_list("rollout_id", "device_id")
    select, params = keys.query.sql_with_params()
    qn = connection.ops.quote_name
    table = qn(TrackingNews._meta.db_table)
    columns = f"{qn('rollout_id')}, {qn('device_id')}"
    # Only quoted identifiers and the ORM's own compiled SELECT are formatted into the SQL.
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({columns}) {select}", params)  # noqa: S608


def tracking_news_take(*, rollout_pk: int) -> set[int]:
    """The devices (pks) with news for the rollout, the news deleted in the caller's
    transaction (so a failed evaluation leaves them for the next)."""
    # In one statement: never news committed after it, which the next evaluation takes.
    return {
        int(pk)
        for pk in delete_returning(
            TrackingNews, where={"rollout_id": rollout_pk}, returning="device_id"
        )
    }


def tracking_news_prune() -> int:
    """Delete the news of rollouts no longer evaluated (finished or deleted); how many.

    News is only recorded for a device in flight, and every evaluation takes its rollout's:
    what is left is what came between a rollout's last evaluation and its end."""
    evaluated = Rollout.objects.filter(status__in=EVALUATED).values("pk")
    deleted, _ = TrackingNews.objects.exclude(rollout_id__in=evaluated).delete()
    return deleted
