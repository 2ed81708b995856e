"""Retention: hourly rollups are computed from raw samples before they are deleted;
raw samples, minute and hour rollups each go after their own period."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from telemetry_support import make_device

from telemetry.ingest import rows_write
from telemetry.models import Granularity, Rollup, Sample
from telemetry.retention import telemetry_retention_apply
from telemetry.rollups import rollups_compute
from telemetry.tasks import telemetry_retention_task

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)


def test_retention_downsamples_then_deletes(settings) -> None:
    settings.FLEET_TELEMETRY_RAW_RETENTION = timedelta(days=14)
    settings.FLEET_TELEMETRY_MINUTE_ROLLUP_RETENTION = timedelta(days=30)
    settings.FLEET_TELEMETRY_HOUR_ROLLUP_RETENTION = timedelta(days=400)
    device = make_device("dev-1")
    expired = NOW - timedelta(days=15)  # raw retention passed
    kept = NOW - timedelta(days=13)
    with transaction.atomic():
        rows_write(
            [
                (device.pk, expired, "kws", "1.4.0", "r-9", "B", "latency_ms", 10.0),
                (
                    device.pk,
                    expired + timedelta(minutes=5),
                    "kws",
                    "1.4.0",
                    "r-9",
                    "B",
                    "latency_ms",
                    30.0,
                ),
                (device.pk, kept, "kws", "1.4.0", "r-9", "B", "latency_ms", 50.0),
            ]
        )
    rollups_compute(granularity=Granularity.MINUTE, start=expired, end=kept + timedelta(minutes=1))
    Rollup.objects.create(
        bucket_seconds=60,
        bucket_start=NOW - timedelta(days=31),
        model="kws",
        version="1.0.0",
        metric="latency_ms",
        count=1,
        sum=1,
        sum_squares=1,
        mean=1,
        min=1,
        max=1,
        p50=1,
        p95=1,
        p99=1,
        computed_at=NOW,
    )
    Rollup.objects.create(
        bucket_seconds=3600,
        bucket_start=NOW - timedelta(days=401),
        model="kws",
        version="1.0.0",
        metric="latency_ms",
        count=1,
        sum=1,
        sum_squares=1,
        mean=1,
        min=1,
        max=1,
        p50=1,
        p95=1,
        p99=1,
        computed_at=NOW,
    )
    # when
    result = telemetry_retention_apply(now=NOW)
    # then the expired raw samples are gone, summarised in their hourly rollup
    assert list(Sample.objects.values_list("value", flat=True)) == [50.0]
    assert result.samples_deleted == 2
    hour = Rollup.objects.get(bucket_seconds=3600)
    assert hour.bucket_start == expired.replace(minute=0)
    assert (hour.count, hour.mean, hour.min, hour.max) == (2, 20.0, 10.0, 30.0)
    # and rollups past their own periods are gone, younger ones kept
    assert not Rollup.objects.filter(
        bucket_start__lt=NOW - timedelta(days=30), bucket_seconds=60
    ).exists()
    assert Rollup.objects.filter(bucket_seconds=60).count() == 3
    assert (result.minute_rollups_deleted, result.hour_rollups_deleted) == (1, 1)
    # and a second run changes nothing
    again = telemetry_retention_apply(now=NOW)
    assert (again.samples_deleted, again.minute_rollups_deleted, again.hour_rollups_deleted) == (
        0,
        0,
        0,
    )
    assert Rollup.objects.get(bucket_seconds=3600).count == 2


def test_the_task_runs_the_service(settings) -> None:
    summary = telemetry_retention_task.delay().get()
    assert summary["samples_deleted"] == 0


def test_the_schedule_has_the_telemetry_tasks(settings) -> None:
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {
        "telemetry.tasks.telemetry_rollup_task",
        "telemetry.tasks.telemetry_retention_task",
    } <= tasks
