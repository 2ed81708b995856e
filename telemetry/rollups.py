"""Rollups: per model version, rollout arm, metric and time bucket, count/sum/mean/min/max
and p50/p95/p99 of the raw samples.

A bucket is (re)computed from raw samples as a whole and replaces its row (an upsert), so
the job is idempotent and a rerun takes in samples that arrived late. The job recomputes the
complete buckets of the last FLEET_TELEMETRY_ROLLUP_LATENESS; retention recomputes the
hourly buckets once more just before their raw samples are deleted. PostgreSQL does it in
one INSERT ... SELECT with `percentile_cont`; SQLite (the embedded default) in Python
with the same interpolation.
"""

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from telemetry.models import Granularity, Rollup, Sample

PERCENTILES = (0.5, 0.95, 0.99)


def percentile_cont(ordered: Sequence[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont over already sorted values (linear interpolation)."""
    if not ordered:
        raise ValueError("no values")
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bucket_floor(moment: datetime, seconds: int) -> datetime:
    """The start of the bucket of `seconds` (aligned to the Unix epoch) holding `moment`."""
    epoch = int(moment.timestamp() // seconds * seconds)
    return datetime.fromtimestamp(epoch, tz=UTC)


_PG_ROLLUP_SQL = """
INSERT INTO telemetry_rollup
    (bucket_seconds, bucket_start, model, version, rollout_id, arm, metric,
     count, sum, sum_squares, mean, min, max, p50, p95, p99, computed_at)
SELECT %(seconds)s, bucket, model, version, rollout_id, arm, metric,
       n, total, squares, total / n, low, high, p[1], p[2], p[3], %(now)s
FROM (
    SELECT to_timestamp(floor(extract(epoch FROM ts) / %(seconds)s) * %(seconds)s) AS bucket,
           model, version, rollout_id, arm, metric,
           count(*) AS n, sum(value) AS total, sum(value * value) AS squares,
           min(value) AS low, max(value) AS high,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY value) AS p
    FROM telemetry_sample
    WHERE ts >= %(start)s AND ts < %(end)s
    GROUP BY 1, 2, 3, 4, 5, 6
) AS buckets
ON CONFLICT (bucket_seconds, bucket_start, model, version, rollout_id, arm, metric) DO UPDATE SET
    count = EXCLUDED.count, sum = EXCLUDED.sum, sum_squares = EXCLUDED.sum_squares,
    mean = EXCLUDED.mean, min = EXCLUDED.min, max = EXCLUDED.max, p50 = EXCLUDED.p50,
    p95 = EXCLUDED.p95, p99 = EXCLUDED.p99, computed_at = EXCLUDED.computed_at
"""
_KEY = ["bucket_seconds", "bucket_start", "model", "version", "rollout_id", "arm", "metric"]
_FIGURES = ["count", "sum", "sum_squares", "mean", "min", "max", "p50", "p95", "p99"]


def rollups_compute(
    *, granularity: Granularity, start: datetime, end: datetime, now: datetime | None = None
) -> int:
    """Recompute every bucket of `granularity` between `start` and `end` (both rounded down
    to bucket boundaries) that has raw samples, replacing its row; rows written. A bucket
    whose raw samples are gone (retention) keeps its row."""
    seconds = int(granularity)
    start, end = bucket_floor(start, seconds), bucket_floor(end, seconds)
    if end <= start:
        return 0
    now = now or timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    _PG_ROLLUP_SQL, {"seconds": seconds, "start": start, "end": end, "now": now}
                )
                return cursor.rowcount
        rows = _python_rollups(seconds, start, end, now)
        Rollup.objects.bulk_create(
            rows,
            batch_size=500,
            update_conflicts=True,
            unique_fields=_KEY,
            update_fields=[*_FIGURES, "computed_at"],
        )
        return len(rows)


def _python_rollups(seconds: int, start: datetime, end: datetime, now: datetime) -> list[Rollup]:
    values = (
        Sample.objects.filter(ts__gte=start, ts__lt=end)
        .values_list("ts", "model", "version", "rollout_id", "arm", "metric", "value")
        .iterator(chunk_size=10_000)
    )
    groups: dict[tuple[datetime, str, str, str, str, str], list[float]] = {}
    for ts, model, version, rollout_id, arm, metric, value in values:
        key = (bucket_floor(ts, seconds), model, version, rollout_id, arm, metric)
        groups.setdefault(key, []).append(value)
    return [_rollup_row(seconds, key, sorted(group), now) for key, group in sorted(groups.items())]


def _rollup_row(
    seconds: int,
    key: tuple[datetime, str, str, str, str, str],
    ordered: list[float],
    now: datetime,
) -> Rollup:
    bucket_start, model, version, rollout_id, arm, metric = key
    total = math.fsum(ordered)
    p50, p95, p99 = (percentile_cont(ordered, p) for p in PERCENTILES)
    return Rollup(
        bucket_seconds=seconds,
        bucket_start=bucket_start,
        model=model,
        version=version,
        rollout_id=rollout_id,
        arm=arm,
        metric=metric,
        count=len(ordered),
        sum=total,
        sum_squares=math.fsum(v * v for v in ordered),
        mean=total / len(ordered),
        min=ordered[0],
        max=ordered[-1],
        p50=p50,
        p95=p95,
        p99=p99,
        computed_at=now,
    )


def rollups_refresh(*, now: datetime | None = None) -> int:
    """The rollup job: recompute the complete minute and hour buckets that ended within
    FLEET_TELEMETRY_ROLLUP_LATENESS; rows written."""
    now = now or timezone.now()
    since = now - settings.FLEET_TELEMETRY_ROLLUP_LATENESS
    written = rollups_compute(granularity=Granularity.MINUTE, start=since, end=now, now=now)
    # The hours that ended within the window (usually none, the first minutes after the
    # hour: the one just completed).
    hour_start = bucket_floor(since, Granularity.HOUR)
    if bucket_floor(now, Granularity.HOUR) > hour_start:
        written += rollups_compute(granularity=Granularity.HOUR, start=hour_start, end=now, now=now)
    return written


def pooled(rollups: Iterable[Rollup]) -> tuple[int, float, float]:
    """(count, mean, sample standard deviation) of the values behind several buckets,
    exact from their counts, sums and sums of squares (a rollout gate's Welch test needs
    no more). The deviation is NaN below two values."""
    n = 0
    total = squares = 0.0
    for rollup in rollups:
        n += rollup.count
        total += rollup.sum
        squares += rollup.sum_squares
    if n == 0:
        return 0, math.nan, math.nan
    mean = total / n
    if n < 2:
        return n, mean, math.nan
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    return n, mean, math.sqrt(variance)
