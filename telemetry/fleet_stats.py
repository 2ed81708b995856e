"""Cheap aggregate reads behind the fleet gauges (telemetry.fleet_collector.FleetCollector).

Each is one GROUP BY over a small table or an indexed slice; they run at scrape time.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Max
from django.utils import timezone

from device_agent.protocol.messages import Phase
from fleet import hooks
from fleet.aggregates import json_array_counts
from fleet.models import Device, DeviceEvent
from telemetry.models import Granularity, Rollup

FINAL_PHASES = (Phase.COMMITTED, Phase.FAILED, Phase.ROLLED_BACK, Phase.REJECTED)
# A rollout arm shows in the gauges while it has a rollup this recent.
ARM_STATS_WINDOW = timedelta(minutes=10)


@dataclass(frozen=True, kw_only=True, slots=True)
class ArmStat:
    """The newest complete one-minute bucket of one metric of one rollout arm."""

    rollout_id: str
    arm: str
    model: str
    version: str
    metric: str
    bucket_start: datetime
    count: int
    mean: float
    p50: float
    p95: float
    p99: float


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetStats:
    """What the fleet gauges show; rows are ordered with the largest counts first."""

    devices: list[tuple[str, bool, int]]  # hardware, online, devices
    device_models: list[tuple[str, str, str, bool, int]]  # hardware, model, version, online, n
    outcomes: list[tuple[str, str, int]]  # final phase, error code, events
    tuf_expires: list[tuple[str, datetime]]  # role, expiry of its newest version
    rollup_latest: datetime | None
    arm_stats: list[ArmStat]


def fleet_stats_read(*, now: datetime | None = None) -> FleetStats:
    """Read every figure of the fleet gauges."""
    now = now or timezone.now()
    return FleetStats(
        devices=_devices(),
        device_models=_device_models(),
        outcomes=_outcomes(),
        tuf_expires=hooks.tuf_expiries(),
        rollup_latest=Rollup.objects.filter(bucket_seconds=Granularity.MINUTE).aggregate(
            latest=Max("bucket_start")
        )["latest"],
        arm_stats=_arm_stats(now),
    )


def _devices() -> list[tuple[str, bool, int]]:
    rows = (
        Device.objects.enabled()
        .values_list("hardware", "online")
        .annotate(n=Count("id"))
        .order_by("-n", "hardware", "online")
    )
    return [(hardware, online, n) for hardware, online, n in rows]


def _device_models() -> list[tuple[str, str, str, bool, int]]:
    """(hardware, model, version, online, devices) over the reported models of the
    enabled devices, largest first."""
    found = json_array_counts(
        Device.objects.enabled(),
        "reported",
        array="models",
        members=("name", "version"),
        by=("hardware", "online"),
    )
    rows = [(hw, model, version, bool(online), n) for (hw, online, model, version), n in found]
    return sorted(rows, key=lambda row: (-row[4], *row[:4]))


def _outcomes() -> list[tuple[str, str, int]]:
    rows = (
        DeviceEvent.objects.filter(phase__in=[p.value for p in FINAL_PHASES])
        .values_list("phase", "code")
        .annotate(n=Count("id"))
        .order_by("-n")
    )
    return [(phase, code, n) for phase, code, n in rows]


def _arm_stats(now: datetime) -> list[ArmStat]:
    metrics = list(getattr(settings, "FLEET_TELEMETRY_GATE_METRICS", ["latency_ms", "confidence"]))
    since = now - ARM_STATS_WINDOW
    # Only complete buckets: a bucket is complete once its minute has passed.
    complete_before = now - timedelta(seconds=Granularity.MINUTE)
    rows = (
        Rollup.objects.filter(
            bucket_seconds=Granularity.MINUTE,
            bucket_start__gte=since,
            bucket_start__lte=complete_before,
            metric__in=metrics,
        )
        .exclude(rollout_id="")
        .order_by("rollout_id", "arm", "model", "version", "metric", "-bucket_start")
    )
    newest: dict[tuple[str, str, str, str, str], ArmStat] = {}
    for r in rows.iterator():
        key = (r.rollout_id, r.arm, r.model, r.version, r.metric)
        if key not in newest:
            newest[key] = ArmStat(
                rollout_id=r.rollout_id,
                arm=r.arm,
                model=r.model,
                version=r.version,
                metric=r.metric,
                bucket_start=r.bucket_start,
                count=r.count,
                mean=r.mean,
                p50=r.p50,
                p95=r.p95,
                p99=r.p99,
            )
    return sorted(newest.values(), key=lambda s: -s.count)
