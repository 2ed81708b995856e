"""Retention and downsampling of telemetry, run daily by Celery beat.

Raw samples live FLEET_TELEMETRY_RAW_RETENTION, one-minute rollups
FLEET_TELEMETRY_MINUTE_ROLLUP_RETENTION, hourly rollups FLEET_TELEMETRY_HOUR_ROLLUP_RETENTION.
Before raw samples go, the hourly buckets they fall in are recomputed from them (the
downsampling step), so hourly rollups are exact and include samples that arrived after the
rollup job last saw their hour. Deletion stops at an hour boundary, so no hour is ever
rolled up from a partly deleted set.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from telemetry.models import Granularity, ReceivedBatch, Rollup, Sample
from telemetry.rollups import bucket_floor, rollups_compute

# How far before the raw cutoff hourly rollups are recomputed: the span one daily run
# deletes, with margin for a run that was missed.
DOWNSAMPLE_SPAN = timedelta(days=2)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetentionResult:
    """What one retention run did."""

    raw_cutoff: datetime
    hourly_rollups_written: int
    samples_deleted: int
    minute_rollups_deleted: int
    hour_rollups_deleted: int


def telemetry_retention_apply(*, now: datetime | None = None) -> RetentionResult:
    """Downsample raw samples about to expire into hourly rollups, then delete what is
    older than its retention period. Idempotent."""
    now = now or timezone.now()
    raw_cutoff = bucket_floor(now - settings.FLEET_TELEMETRY_RAW_RETENTION, Granularity.HOUR)
    with transaction.atomic():
        written = rollups_compute(
            granularity=Granularity.HOUR,
            start=raw_cutoff - DOWNSAMPLE_SPAN,
            end=raw_cutoff,
            now=now,
        )
        samples, _ = Sample.objects.filter(ts__lt=raw_cutoff).delete()
    minutes, _ = Rollup.objects.filter(
        bucket_seconds=Granularity.MINUTE,
        bucket_start__lt=now - settings.FLEET_TELEMETRY_MINUTE_ROLLUP_RETENTION,
    ).delete()
    hours, _ = Rollup.objects.filter(
        bucket_seconds=Granularity.HOUR,
        bucket_start__lt=now - settings.FLEET_TELEMETRY_HOUR_ROLLUP_RETENTION,
    ).delete()
    # A message received before the sample window is refused as stale if it comes again.
    ReceivedBatch.objects.filter(
        received_at__lt=now - settings.FLEET_TELEMETRY_MAX_AGE - timedelta(hours=1)
    ).delete()
    return RetentionResult(
        raw_cutoff=raw_cutoff,
        hourly_rollups_written=written,
        samples_deleted=samples,
        minute_rollups_deleted=minutes,
        hour_rollups_deleted=hours,
    )
