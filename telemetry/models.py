"""Telemetry storage: raw metric values and their per-bucket rollups.

Raw rows are narrow, one per metric value, rather than one wide row per sample with a
JSON object of metrics: every rollup and gate query is "one metric of one rollout arm
over a time range", which on narrow rows is a plain indexed range scan and a GROUP BY
with `percentile_cont`, and on wide rows would unpack JSON for every row it touches.
Narrow rows also COPY faster per value: fixed binary columns, no JSON to parse.
"""

from django.db import models

from fleet.models import Device


class Sample(models.Model):
    """One metric value a device reported in one telemetry sample (docs/protocol.md, `telemetry`).

    Keyed by device, model, version, rollout arm and the device's timestamp. A sample
    sent outside a rollout has an empty `rollout_id` and `arm`. Rows are only ever
    inserted (by the bridge, with COPY on PostgreSQL) and deleted by retention.
    """

    # No database-level constraint: its trigger would check every row COPY writes, which
    # slows the write markedly. Deleting a device still deletes its samples (Django cascades);
    # rows of a device deleted while its batch was in flight go with retention.
    device = models.ForeignKey(
        Device,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    ts = models.DateTimeField(help_text="when the device took the sample")
    model = models.CharField(max_length=64)
    version = models.CharField(max_length=64)
    rollout_id = models.CharField(max_length=64, blank=True)
    arm = models.CharField(max_length=64, blank=True)
    metric = models.CharField(max_length=64)
    value = models.FloatField()

    class Meta:
        indexes = [
            models.Index(fields=["device", "-ts"], name="telemetry_sample_device_ts"),
            # What rollout gates read: one metric of one arm since a time.
            models.Index(
                fields=["rollout_id", "arm", "metric", "ts"],
                name="telemetry_sample_arm_ts",
                condition=~models.Q(rollout_id=""),
            ),
            # Rollups and retention scan by time only; PostgreSQL gets a BRIN index on
            # `ts` instead (migration 0002), a few pages where a B-tree would cost a
            # write per row.
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.model} {self.version} {self.metric}={self.value}"


class ReceivedBatch(models.Model):
    """A telemetry message whose samples are stored: the sha256 of its payload, per device.

    A broker delivers a QoS 1 message again when the bridge had not acknowledged it, and
    replays a retained one to every new subscription: the bridge stores a payload's
    samples once. Rows older than FLEET_TELEMETRY_MAX_AGE go with retention (a message
    that old is refused as stale anyway).
    """

    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    digest = models.CharField(max_length=64)
    received_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "digest"], name="telemetry_batch_once")
        ]
        indexes = [models.Index(fields=["received_at"], name="telemetry_batch_received")]

    def __str__(self) -> str:
        return f"{self.device_id} {self.digest[:12]}"


class Granularity(models.IntegerChoices):
    MINUTE = 60, "1 minute"
    HOUR = 3600, "1 hour"


class Rollup(models.Model):
    """Statistics of one metric over one time bucket, per model version and rollout arm.

    Written by the rollup job (recomputed while late samples may still arrive) and by
    retention, which computes the hourly rows from raw samples before deleting them.
    Percentiles are `percentile_cont` (linear interpolation) over the bucket's values;
    `sum_squares` lets a reader pool several buckets into a mean and a variance.
    """

    bucket_seconds = models.PositiveIntegerField(choices=Granularity.choices)
    bucket_start = models.DateTimeField()
    model = models.CharField(max_length=64)
    version = models.CharField(max_length=64)
    rollout_id = models.CharField(max_length=64, blank=True)
    arm = models.CharField(max_length=64, blank=True)
    metric = models.CharField(max_length=64)
    count = models.BigIntegerField()
    sum = models.FloatField()
    sum_squares = models.FloatField()
    mean = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()
    p50 = models.FloatField()
    p95 = models.FloatField()
    p99 = models.FloatField()
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "bucket_seconds",
                    "bucket_start",
                    "model",
                    "version",
                    "rollout_id",
                    "arm",
                    "metric",
                ],
                name="telemetry_rollup_unique_bucket",
            )
        ]
        indexes = [
            models.Index(
                fields=["rollout_id", "arm", "metric", "bucket_seconds", "bucket_start"],
                name="telemetry_rollup_arm",
            ),
            models.Index(
                fields=["model", "version", "metric", "bucket_seconds", "bucket_start"],
                name="telemetry_rollup_version",
            ),
        ]

    def __str__(self) -> str:
        arm = f" {self.rollout_id}/{self.arm}" if self.rollout_id else ""
        when = f"{self.bucket_start:%Y-%m-%d %H:%M}"
        return f"{self.model} {self.version}{arm} {self.metric} @ {when}"
