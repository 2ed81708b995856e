"""Rollups: per model version, rollout arm, metric and time bucket, count/sum/mean/min/max
and p50/p95/p99 of the raw samples.

A bucket is (re)computed from raw samples as a whole and replaces its row (an upsert), so
the job is idempotent and a rerun takes in samples that arrived late. The job recomputes the
complete buckets of the last FLEET_TELEMETRY_ROLLUP_LATENESS; retention recomputes the
hourly buckets once more just before their raw samples are deleted. The figures come from
`fleet.aggregates.summaries` (`percentile_cont` in PostgreSQL, the same interpolation in
Python elsewhere) and go in with one upsert (`fleet.bulk.columns_upsert`).
"""

import math
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet.aggregates import bucket_floor, summaries
from fleet.bulk import columns_upsert
from telemetry.models import Granularity, Rollup, Sample

_KEYS = ("model", "version", "rollout_id", "arm", "metric")
_UNIQUE = ["bucket_seconds", "bucket_start", *_KEYS]
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
        found = summaries(
            Sample.objects.filter(ts__gte=start, ts__lt=end),
            "value",
            keys=_KEYS,
            bucket=("ts", seconds),
        )
        columns: dict[str, list[object]] = {name: [] for name in [*_UNIQUE, *_FIGURES]}
        for (bucket_start, *key), figures in found:
            for name, value in zip(_UNIQUE, (seconds, bucket_start, *key), strict=True):
                columns[name].append(value)
            for name in _FIGURES:
                columns[name].append(getattr(figures, name))
        columns["computed_at"] = [now] * len(found)
        return columns_upsert(Rollup, columns, unique=_UNIQUE, update=[*_FIGURES, "computed_at"])


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
