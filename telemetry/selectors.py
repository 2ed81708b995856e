"""Reads of telemetry: a device's recent samples, rollups, and what rollout gates need.

Gates read `arm_metric_summary()`: count, mean, standard deviation and percentiles of one
metric of one rollout arm, exact, from raw samples (kept for the raw retention period),
optionally with the most recent raw values for a rank test. `metric_buckets()` and
`rollups.pooled()` give per-bucket figures and pooled mean/deviation from rollups, which
also cover a baseline version outside any rollout and periods older than raw retention.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from django.db.models import QuerySet

from fleet.aggregates import Summary, summaries, summary_of
from fleet.identifiers import PHASED_ARM
from telemetry.models import Granularity, Rollup, Sample


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricSummary:
    """One metric of one rollout arm over a time range. Figures are NaN when count is 0
    (stddev when below 2); `samples` holds up to the requested number of the most recent
    raw values, newest first."""

    count: int
    mean: float
    stddev: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float
    samples: tuple[float, ...] = ()


def device_recent_samples(
    *, device_pk: int, since: datetime | None = None, metric: str | None = None, limit: int = 500
) -> QuerySet[Sample]:
    """A device's samples, newest first: at most `limit` rows, optionally one metric only."""
    qs = Sample.objects.filter(device_id=device_pk)
    if since is not None:
        qs = qs.filter(ts__gte=since)
    if metric:
        qs = qs.filter(metric=metric)
    return qs.order_by("-ts", "id")[:limit]


def _arm_values(
    *, rollout_id: str, arm: str, metric: str, since: datetime, until: datetime | None
) -> QuerySet[Sample]:
    qs = Sample.objects.filter(rollout_id=rollout_id, arm=arm, metric=metric, ts__gte=since)
    if until is not None:
        qs = qs.filter(ts__lt=until)
    return qs


def arm_metric_summary(
    *,
    rollout_id: str,
    arm: str,
    metric: str,
    since: datetime,
    until: datetime | None = None,
    max_samples: int = 0,
) -> MetricSummary:
    """Count, mean, stddev, min, max, p50/p95/p99 of one metric of one rollout arm between
    `since` and `until` (default: now and later), exact, plus up to `max_samples` raw values."""
    if not rollout_id:
        raise ValueError("arm_metric_summary needs a rollout id")
    values = _arm_values(rollout_id=rollout_id, arm=arm, metric=metric, since=since, until=until)
    recent: tuple[float, ...] = ()
    if max_samples > 0:
        recent = tuple(values.order_by("-ts").values_list("value", flat=True)[:max_samples])
    found = summaries(values, "value")
    return _from_summary(found[0][1], recent) if found else _empty(recent)


def summarize(ordered: list[float], *, samples: tuple[float, ...] = ()) -> MetricSummary:
    """The summary of sorted values, computed as PostgreSQL does."""
    if not ordered:
        return _empty(samples)
    return _from_summary(summary_of(list(ordered)), samples)


def _from_summary(found: Summary, samples: tuple[float, ...]) -> MetricSummary:
    return MetricSummary(
        count=found.count,
        mean=found.mean,
        stddev=found.stddev,
        min=found.min,
        max=found.max,
        p50=found.p50,
        p95=found.p95,
        p99=found.p99,
        samples=samples,
    )


def _empty(samples: tuple[float, ...]) -> MetricSummary:
    nan = math.nan
    return MetricSummary(
        count=0, mean=nan, stddev=nan, min=nan, max=nan, p50=nan, p95=nan, p99=nan, samples=samples
    )


def metric_buckets(
    *,
    metric: str,
    since: datetime,
    until: datetime | None = None,
    granularity: Granularity = Granularity.MINUTE,
    rollout_id: str | None = None,
    arm: str | None = None,
    model: str | None = None,
    version: str | None = None,
) -> QuerySet[Rollup]:
    """Rollup buckets of one metric, oldest first, filtered by rollout/arm or model/version
    (an empty rollout id selects samples sent outside any rollout)."""
    qs = Rollup.objects.filter(metric=metric, bucket_seconds=granularity, bucket_start__gte=since)
    if until is not None:
        qs = qs.filter(bucket_start__lt=until)
    for name, value in (
        ("rollout_id", rollout_id),
        ("arm", arm),
        ("model", model),
        ("version", version),
    ):
        if value is not None:
            qs = qs.filter(**{name: value})
    return qs.order_by("bucket_start", "arm", "model", "version")


def rollout_arms(*, rollout_id: str, since: datetime) -> list[str]:
    """The arms of a rollout that have rollups since `since`."""
    return sorted(
        set(
            Rollup.objects.filter(rollout_id=rollout_id, bucket_start__gte=since).values_list(
                "arm", flat=True
            )
        )
    )


# --- the rollout gates' telemetry source (ota.gates.TelemetrySource) ----------------------

# As ota.gates names it: the comparison group of devices outside a phased rollout.
PHASED_BASELINE = "baseline"
_STATISTICS = ("mean", "p50", "p95", "p99")  # fields of fleet.aggregates.Summary


# Read-only members (properties), so that frozen dataclasses such as
# ota.gates.TelemetryQuery and its Arm satisfy them.
class _ArmLike(Protocol):
    @property
    def name(self) -> str: ...


class _TelemetryQueryLike(Protocol):
    """The fields of ota.gates.TelemetryQuery this source reads."""

    @property
    def rollout_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def statistic(self) -> str: ...
    @property
    def since(self) -> datetime | None: ...
    @property
    def arms(self) -> Sequence[_ArmLike]: ...
    @property
    def baseline(self) -> str: ...


def rollout_arm_device_values(query: _TelemetryQueryLike) -> dict[str, list[float]]:
    """Per arm, one value per device: the device's statistic (mean, p50, p95, p99) of the
    metric over its raw samples of the model tagged with the rollout and that arm since
    `query.since`; ordered by device. A phased rollout's arm `main` also reads its samples
    stored with no arm (before ingestion named them `main`); its baseline `baseline` reads
    the model's samples outside this rollout. The device, not the sample, is the unit
    (ota.gates explains why).

    Set FLEET_ROLLOUT_TELEMETRY_SOURCE to "telemetry.selectors.rollout_arm_device_values".
    """
    if query.statistic not in _STATISTICS:
        raise ValueError(f"unknown statistic {query.statistic!r}")
    phased = query.baseline == PHASED_BASELINE
    values: dict[str, list[float]] = {}
    for arm in query.arms:
        names = [arm.name, ""] if phased and arm.name == PHASED_ARM else [arm.name]
        values[arm.name] = _per_device(query, arms=names)
    if phased:
        values[PHASED_BASELINE] = _per_device(query, arms=None)
    return values


def _per_device(query: _TelemetryQueryLike, *, arms: list[str] | None) -> list[float]:
    """Per-device statistic of the rollout's `arms`, or (None) of samples outside it."""
    since = query.since or datetime(1970, 1, 1, tzinfo=UTC)
    rows = Sample.objects.filter(model=query.model, metric=query.metric, ts__gte=since)
    if arms is None:
        rows = rows.exclude(rollout_id=query.rollout_id)
    else:
        rows = rows.filter(rollout_id=query.rollout_id, arm__in=arms)
    statistic = query.statistic
    found = summaries(rows, "value", keys=("device_id",), percentiles=statistic != "mean")
    return [float(getattr(figures, statistic)) for _, figures in found]
