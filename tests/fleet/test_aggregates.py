"""fleet.aggregates: on PostgreSQL the figures come from one statement, elsewhere from
Python; both give the answers worked out here by hand, and on PostgreSQL the statement
matches the Python reading of the same rows (run with -m db_both on both databases)."""

import math
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.aggregates import (
    json_array_counts,
    json_array_counts_python,
    summaries,
    summaries_python,
)
from fleet.models import Device
from telemetry.models import Sample

pytestmark = [pytest.mark.django_db, pytest.mark.db_both]

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _samples(device: Device, rows: list[tuple[timedelta, str, float]]) -> None:
    Sample.objects.bulk_create(
        Sample(device=device, ts=T0 + at, model="kws", version="1", metric=m, value=v)
        for at, m, v in rows
    )


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)
    return a == b


def _same(found: list, expected: list) -> bool:
    if [key for key, _ in found] != [key for key, _ in expected]:
        return False
    for (_, a), (_, b) in zip(found, expected, strict=True):
        for name in a.__dataclass_fields__:
            if not _close(getattr(a, name), getattr(b, name)):
                return False
    return True


def test_summaries_by_key_and_bucket() -> None:
    # given values of two metrics over two minutes
    device = Device.objects.create(device_id="d-1", hardware="h")
    _samples(
        device,
        [
            (timedelta(seconds=1), "latency_ms", 1.0),
            (timedelta(seconds=2), "latency_ms", 2.0),
            (timedelta(seconds=3), "latency_ms", 4.0),
            (timedelta(seconds=59), "latency_ms", 3.0),
            (timedelta(seconds=61), "latency_ms", 10.0),
            (timedelta(seconds=5), "confidence", 0.5),
        ],
    )
    rows = Sample.objects.all()
    # when
    with CaptureQueriesContext(connection) as queries:
        found = summaries(rows, "value", keys=("metric",), bucket=("ts", 60))
    # then one group per (minute, metric), in order, figures as percentile_cont has them
    assert len(queries) == 1
    keys = [key for key, _ in found]
    assert keys == [
        (T0, "confidence"),
        (T0, "latency_ms"),
        (T0 + timedelta(minutes=1), "latency_ms"),
    ]
    first = found[1][1]
    assert (first.count, first.sum, first.sum_squares, first.min, first.max) == (
        4,
        10.0,
        30.0,
        1.0,
        4.0,
    )
    assert first.mean == pytest.approx(2.5)
    assert first.stddev == pytest.approx(math.sqrt(5 / 3))
    # sorted 1, 2, 3, 4: p50 halfway between 2 and 3, p95 at 2.85 of 3 steps
    assert (first.p50, first.p95, first.p99) == pytest.approx((2.5, 3.85, 3.97))
    single = found[2][1]
    assert single.count == 1
    assert math.isnan(single.stddev)
    assert single.p99 == 10.0
    assert _same(found, summaries_python(rows, "value", keys=("metric",), bucket=("ts", 60)))


def test_summaries_of_all_rows_and_of_none() -> None:
    device = Device.objects.create(device_id="d-1", hardware="h")
    _samples(device, [(timedelta(seconds=s), "m", float(s)) for s in range(1, 11)])
    ((key, whole),) = summaries(Sample.objects.all(), "value")
    assert key == ()
    assert (whole.count, whole.p50) == (10, 5.5)
    # without percentiles nothing is sorted, and the rest is the same
    ((_, plain),) = summaries(Sample.objects.all(), "value", percentiles=False)
    assert math.isnan(plain.p95)
    assert (plain.count, plain.mean, plain.stddev) == pytest.approx(
        (whole.count, whole.mean, whole.stddev)
    )
    # no rows: no group, even without keys
    assert summaries(Sample.objects.filter(metric="nothing"), "value") == []
    assert summaries(Sample.objects.filter(metric__in=[]), "value", keys=("metric",)) == []
    assert json_array_counts(Device.objects.none(), "reported", array="a", members=("b",)) == []
    assert _same(
        summaries(Sample.objects.filter(ts__gte=T0 + timedelta(seconds=4)), "value"),
        summaries_python(Sample.objects.filter(ts__gte=T0 + timedelta(seconds=4)), "value"),
    )


REPORTS = [
    ("h1", True, {"models": [{"name": "kws", "version": "1.0.0", "slot": "a"}]}),
    (
        "h1",
        True,
        {"models": [{"name": "kws", "version": "1.0.0"}, {"name": "vad", "version": "3"}]},
    ),
    ("h1", False, {"models": [{"name": "kws", "version": "1.0.0"}]}),
    ("h2", True, {"models": [{"name": "kws", "version": 2}, "kws", ["x"], None]}),
    ("h2", True, {"models": "kws"}),
    ("h2", True, {}),
    ("h2", True, ["models"]),
]


def test_json_array_counts_by_fields_and_with_the_empty_rows() -> None:
    Device.objects.bulk_create(
        Device(device_id=f"d-{i}", hardware=hw, online=online, reported=reported)
        for i, (hw, online, reported) in enumerate(REPORTS)
    )
    Device.objects.create(device_id="gone", hardware="h1", revoked_at=timezone.now())
    rows = Device.objects.filter(revoked_at__isnull=True)
    members = ("name", "version")
    by_class = json_array_counts(
        rows, "reported", array="models", members=members, by=("hardware", "online")
    )
    assert by_class == [
        (("h1", True, "kws", "1.0.0"), 2),
        (("h1", False, "kws", "1.0.0"), 1),
        (("h1", True, "vad", "3"), 1),
    ]
    with_empty = json_array_counts(rows, "reported", array="models", members=members, empty=True)
    # four devices report no counted entry (a number is no version; a revoked one is not read)
    assert with_empty == [((None, None), 4), (("kws", "1.0.0"), 3), (("vad", "3"), 1)]
    for by, empty in (((), True), (("hardware", "online"), False), (("hardware",), True)):
        assert json_array_counts(
            rows, "reported", array="models", members=members, by=by, empty=empty
        ) == json_array_counts_python(
            rows, "reported", array="models", members=members, by=by, empty=empty
        )
