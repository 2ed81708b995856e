"""Celery tasks of telemetry: small, idempotent, one service call each."""

from celery import shared_task

from telemetry.retention import telemetry_retention_apply
from telemetry.rollups import rollups_refresh


@shared_task
def telemetry_rollup_task() -> int:
    """Recompute the recent one-minute and one-hour rollups (beat, every minute)."""
    return rollups_refresh()


@shared_task
def telemetry_retention_task() -> dict[str, object]:
    """Downsample and delete expired telemetry (beat, daily)."""
    result = telemetry_retention_apply()
    return {
        "raw_cutoff": result.raw_cutoff.isoformat(),
        "hourly_rollups_written": result.hourly_rollups_written,
        "samples_deleted": result.samples_deleted,
        "minute_rollups_deleted": result.minute_rollups_deleted,
        "hour_rollups_deleted": result.hour_rollups_deleted,
    }
