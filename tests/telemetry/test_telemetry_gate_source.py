"""The rollout gates' telemetry source: per arm, one value per device (the device's mean
or percentile of a metric since the rollout started); a phased rollout's arm and its
baseline of devices outside the rollout."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from telemetry_support import make_device

from telemetry.ingest import rows_write
from telemetry.selectors import rollout_arm_device_values

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Arm:
    name: str


@dataclass(frozen=True)
class Query:
    """The fields of ota.gates.TelemetryQuery."""

    rollout_id: str
    model: str
    metric: str
    statistic: str
    since: datetime | None
    arms: tuple[Arm, ...]
    baseline: str


def _store(rows: list[tuple[str, datetime, str, str, str, float]]) -> None:
    pks = {}
    for device_id, *_ in rows:
        if device_id not in pks:
            pks[device_id] = make_device(device_id).pk
    with transaction.atomic():
        rows_write(
            [
                (pks[d], ts, "kws", "1.4.0", rollout, arm, metric, value)
                for d, ts, rollout, arm, metric, value in rows
            ]
        )


def test_ab_arms_give_one_value_per_device() -> None:
    rows = []
    for i in range(10):
        ts = T0 + timedelta(seconds=i)
        rows += [
            ("dev-a1", ts, "r-9", "A", "latency_ms", 10.0 + i),  # mean 14.5
            ("dev-a2", ts, "r-9", "A", "latency_ms", 20.0),
            ("dev-b1", ts, "r-9", "B", "latency_ms", float(i)),  # p95 8.55
            ("dev-b1", ts, "r-9", "B", "confidence", 0.5),  # another metric
            ("dev-x", ts, "r-8", "A", "latency_ms", 99.0),  # another rollout
        ]
    rows.append(("dev-a1", T0 - timedelta(hours=1), "r-9", "A", "latency_ms", 1000.0))  # before
    _store(rows)
    query = Query("r-9", "kws", "latency_ms", "mean", T0, (Arm("A"), Arm("B")), "A")
    assert rollout_arm_device_values(query) == {"A": [14.5, 20.0], "B": [4.5]}
    p95 = rollout_arm_device_values(Query("r-9", "kws", "latency_ms", "p95", T0, (Arm("B"),), "B"))
    assert p95["B"] == [pytest.approx(8.55)]


def test_a_phased_rollout_against_devices_outside_it() -> None:
    _store(
        [
            ("dev-1", T0, "r-7", "", "latency_ms", 30.0),  # in the rollout: no arm
            ("dev-1", T0, "r-7", "", "latency_ms", 50.0),
            ("dev-2", T0, "", "", "latency_ms", 20.0),  # outside any rollout
            ("dev-3", T0, "r-1", "B", "latency_ms", 25.0),  # in another rollout
        ]
    )
    query = Query("r-7", "kws", "latency_ms", "p50", None, (Arm("main"),), "baseline")
    assert rollout_arm_device_values(query) == {"main": [40.0], "baseline": [20.0, 25.0]}
