"""Rollups per model version, rollout arm, metric and bucket, and the gates' summary:
the database (percentile_cont on PostgreSQL) and the Python path (SQLite) agree with a
reference computed here; a rerun replaces buckets, taking in late samples."""

import math
import random
import statistics
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from telemetry_support import make_device

from fleet.aggregates import percentile_cont
from telemetry.ingest import rows_write
from telemetry.models import Granularity, Rollup
from telemetry.rollups import bucket_floor, pooled, rollups_compute, rollups_refresh
from telemetry.selectors import arm_metric_summary, metric_buckets, summarize

pytestmark = [pytest.mark.django_db, pytest.mark.db_both]

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _store(device_pk: int, rows: list[tuple[datetime, str, str, str, str, float]]) -> None:
    with transaction.atomic():
        rows_write(
            [
                (device_pk, ts, "kws", version, rollout, arm, metric, value)
                for ts, version, rollout, arm, metric, value in rows
            ]
        )


def _reference(values: list[float]) -> tuple[float, float, float]:
    # statistics.quantiles(method="inclusive") is percentile_cont's interpolation.
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def test_percentile_cont_matches_linear_interpolation() -> None:
    rng = random.Random(7)  # noqa: S311 (test data)
    values = sorted(rng.uniform(0, 100) for _ in range(257))
    p50, p95, p99 = _reference(values)
    assert percentile_cont(values, 0.5) == pytest.approx(p50)
    assert percentile_cont(values, 0.95) == pytest.approx(p95)
    assert percentile_cont(values, 0.99) == pytest.approx(p99)
    assert percentile_cont([3.0], 0.95) == 3.0
    assert bucket_floor(T0 + timedelta(seconds=119), 60) == T0 + timedelta(minutes=1)


def test_minute_rollups_per_arm_and_metric() -> None:
    # given two arms' latency in two minutes, and samples outside any rollout
    device = make_device("dev-1")
    rng = random.Random(1)  # noqa: S311 (test data)
    a = [rng.gauss(20, 3) for _ in range(101)]
    b = [rng.gauss(15, 2) for _ in range(53)]
    rows = [
        (T0 + timedelta(seconds=i % 60), "1.3.0", "r-9", "A", "latency_ms", v)
        for i, v in enumerate(a)
    ]
    rows += [
        (T0 + timedelta(seconds=60 + i % 60), "1.4.0", "r-9", "B", "latency_ms", v)
        for i, v in enumerate(b)
    ]
    rows += [(T0 + timedelta(seconds=5), "1.4.0", "", "", "latency_ms", 99.0)]
    _store(device.pk, rows)
    # when
    written = rollups_compute(
        granularity=Granularity.MINUTE, start=T0, end=T0 + timedelta(minutes=2)
    )
    # then one row per (bucket, version, arm, metric)
    assert written == 3
    row_a = Rollup.objects.get(arm="A")
    assert (row_a.bucket_start, row_a.version, row_a.count) == (T0, "1.3.0", 101)
    assert row_a.mean == pytest.approx(statistics.fmean(a))
    assert (row_a.min, row_a.max) == (pytest.approx(min(a)), pytest.approx(max(a)))
    assert (row_a.p50, row_a.p95, row_a.p99) == pytest.approx(_reference(a))
    row_b = Rollup.objects.get(arm="B")
    assert row_b.bucket_start == T0 + timedelta(minutes=1)
    assert (row_b.p50, row_b.p95, row_b.p99) == pytest.approx(_reference(b))
    baseline = Rollup.objects.get(rollout_id="")
    assert (baseline.version, baseline.count, baseline.p95) == ("1.4.0", 1, 99.0)
    # and pooling buckets gives the exact mean and deviation
    n, mean, stddev = pooled(
        metric_buckets(metric="latency_ms", since=T0, rollout_id="r-9", arm="A")
    )
    assert (n, mean, stddev) == (
        101,
        pytest.approx(statistics.fmean(a)),
        pytest.approx(statistics.stdev(a)),
    )


def test_a_rerun_replaces_buckets_and_takes_in_late_samples() -> None:
    device = make_device("dev-1")
    _store(device.pk, [(T0, "1.4.0", "r-9", "B", "confidence", 0.5)])
    rollups_compute(granularity=Granularity.MINUTE, start=T0, end=T0 + timedelta(minutes=1))
    # a late sample for the same minute
    _store(device.pk, [(T0 + timedelta(seconds=30), "1.4.0", "r-9", "B", "confidence", 0.9)])
    rollups_compute(granularity=Granularity.MINUTE, start=T0, end=T0 + timedelta(minutes=1))
    row = Rollup.objects.get()
    assert (row.count, row.mean, row.p50) == (2, pytest.approx(0.7), pytest.approx(0.7))


def test_the_job_rolls_up_complete_minutes_and_the_hour_just_ended() -> None:
    device = make_device("dev-1")
    _store(
        device.pk,
        [
            (T0 - timedelta(minutes=2), "1.4.0", "r-9", "B", "latency_ms", 10.0),
            (T0 - timedelta(seconds=1), "1.4.0", "r-9", "B", "latency_ms", 20.0),
            (T0 + timedelta(seconds=10), "1.4.0", "r-9", "B", "latency_ms", 30.0),  # incomplete
        ],
    )
    rollups_refresh(now=T0 + timedelta(seconds=30))
    minutes = list(
        Rollup.objects.filter(bucket_seconds=60)
        .order_by("bucket_start")
        .values_list("bucket_start", "mean")
    )
    assert minutes == [(T0 - timedelta(minutes=2), 10.0), (T0 - timedelta(minutes=1), 20.0)]
    hour = Rollup.objects.get(bucket_seconds=3600)
    assert (hour.bucket_start, hour.count, hour.mean) == (T0 - timedelta(hours=1), 2, 15.0)


def test_arm_metric_summary_is_exact_and_can_return_raw_samples() -> None:
    device = make_device("dev-1")
    rng = random.Random(3)  # noqa: S311 (test data)
    values = [rng.expovariate(0.1) for _ in range(400)]
    _store(
        device.pk,
        [
            (T0 + timedelta(milliseconds=10 * i), "1.4.0", "r-9", "B", "latency_ms", v)
            for i, v in enumerate(values)
        ]
        + [
            (T0, "1.4.0", "r-9", "A", "latency_ms", 1.0),
            (T0, "1.4.0", "r-9", "B", "confidence", 1.0),
        ],
    )
    summary = arm_metric_summary(
        rollout_id="r-9", arm="B", metric="latency_ms", since=T0, max_samples=5
    )
    assert summary.count == 400
    assert summary.mean == pytest.approx(statistics.fmean(values))
    assert summary.stddev == pytest.approx(statistics.stdev(values))
    assert (summary.p50, summary.p95, summary.p99) == pytest.approx(_reference(values))
    assert summary.samples == pytest.approx(tuple(reversed(values[-5:])))
    later = arm_metric_summary(
        rollout_id="r-9", arm="B", metric="latency_ms", since=T0 + timedelta(hours=1)
    )
    assert later.count == 0
    assert math.isnan(later.mean)
    assert summarize([2.0]).stddev != summarize([2.0]).stddev  # NaN below two values
