"""The ingest sink: what passes is stored as one row per metric value; what does not is
counted by reason and never stored; counters move only when the batch commits."""

from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, OperationalError, transaction
from prometheus_client import REGISTRY
from telemetry_support import (
    batch,
    live_rollout,
    make_device,
    now_utc,
    register_model,
    sample,
    years,
)

from telemetry.ingest import TelemetryIngest, rows_write
from telemetry.models import Sample

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_both]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _dropped(reason: str) -> float:
    return _metric("fleet_telemetry_samples_dropped_total", reason=reason)


def _ingest(**overrides: Any) -> TelemetryIngest:
    options: dict[str, Any] = {
        "max_age": timedelta(days=7),
        "max_future": timedelta(minutes=10),
        "model_cache_seconds": 0,
    }
    options.update(overrides)
    return TelemetryIngest(**options)


def test_valid_samples_are_stored_one_row_per_metric_value() -> None:
    # given
    device = make_device("dev-1")
    register_model("kws")
    live_rollout(9)
    now = now_utc()
    ingest = _ingest()
    stored_before = _metric("fleet_telemetry_samples_stored_total")
    latency_before = _metric(
        "fleet_model_latency_seconds_count", model="kws", version="1.4.0", rollout="r-9", arm="B"
    )
    # when
    with transaction.atomic():
        ingest.add(
            device=device,
            batch=batch(
                sample(ts=now, latency_ms=10, confidence=0.5),
                sample(ts=now + timedelta(seconds=1), rollout_id=None, arm=None, latency_ms=20),
            ),
            received_at=now,
        )
        ingest.flush()
    # then
    rows = list(
        Sample.objects.order_by("ts", "metric").values_list(
            "device_id", "model", "version", "rollout_id", "arm", "metric", "value"
        )
    )
    assert rows == [
        (device.pk, "kws", "1.4.0", "r-9", "B", "confidence", 0.5),
        (device.pk, "kws", "1.4.0", "r-9", "B", "latency_ms", 10.0),
        (device.pk, "kws", "1.4.0", "", "", "confidence", 0.93),
        (device.pk, "kws", "1.4.0", "", "", "latency_ms", 20.0),
    ]
    assert Sample.objects.filter(ts=now).count() == 2
    assert _metric("fleet_telemetry_samples_stored_total") == stored_before + 2
    assert (
        _metric(
            "fleet_model_latency_seconds_count",
            model="kws",
            version="1.4.0",
            rollout="r-9",
            arm="B",
        )
        == latency_before + 1
    )
    assert (
        _metric(
            "fleet_model_latency_seconds_bucket",
            model="kws",
            version="1.4.0",
            rollout="none",
            arm="none",
            le="0.025",
        )
        >= 1
    )


def _latency_count(version: str, rollout: str, arm: str) -> float:
    return _metric(
        "fleet_model_latency_seconds_count", model="kws", version=version, rollout=rollout, arm=arm
    )


def test_model_histograms_keep_two_rollouts_of_one_model_apart() -> None:
    # given two running rollouts of kws whose arms have the same names, a finished one and
    # a rollout of another model
    device = make_device("dev-1")
    live_rollout(9)
    live_rollout(11)
    live_rollout(5, status="completed")
    live_rollout(12, model="vad")
    now = now_utc()
    ingest = _ingest()
    version = "7.0.9"  # no other test observes it
    labels = [
        ("r-9", "A"),
        ("r-11", "A"),
        ("none", "none"),
    ]
    before = {key: _latency_count(version, *key) for key in labels}
    # when samples name each of them, a made-up rollout, an arm the rollout has not, and
    # no rollout
    tagged = [
        ("r-9", "A", 2),
        ("r-11", "A", 3),
        ("r-5", "A", 1),  # finished
        ("r-12", "A", 1),  # another model's
        ("r-999", "A", 1),  # no such rollout
        ("r-9", "Z", 1),  # no such arm
        (None, None, 1),
    ]
    with transaction.atomic():
        ingest.add(
            device=device,
            batch=batch(
                *(
                    sample(ts=now, version=version, rollout_id=rollout_id, arm=arm)
                    for rollout_id, arm, n in tagged
                    for _ in range(n)
                )
            ),
            received_at=now,
        )
        ingest.flush()
    # then each live rollout's arm has its own series, everything else is rollout="none"
    after = {key: _latency_count(version, *key) - before[key] for key in labels}
    assert after == {("r-9", "A"): 2, ("r-11", "A"): 3, ("none", "none"): 5}
    series = {
        (s.labels["rollout"], s.labels["arm"])
        for metric in REGISTRY.collect()
        if metric.name == "fleet_model_latency_seconds"
        for s in metric.samples
        if s.labels.get("version") == version
    }
    assert series == set(labels)
    # and the rows keep what the devices said (the gates read them)
    assert Sample.objects.filter(metric="latency_ms", rollout_id="r-5").count() == 1


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (-years(3), "stale_timestamp"),
        (-timedelta(days=8), "stale_timestamp"),
        (timedelta(minutes=11), "future_timestamp"),
        (years(5), "future_timestamp"),
    ],
)
def test_samples_outside_the_time_window_are_dropped(offset: timedelta, reason: str) -> None:
    device = make_device("dev-1")
    register_model("kws")
    now = now_utc()
    ingest = _ingest()
    before = _dropped(reason)
    with transaction.atomic():
        ingest.add(
            device=device, batch=batch(sample(ts=now + offset), sample(ts=now)), received_at=now
        )
        ingest.flush()
    assert Sample.objects.count() == 2  # the in-window sample's two metrics
    assert not Sample.objects.exclude(ts=now).exists()
    assert _dropped(reason) == before + 1


def test_samples_of_an_unregistered_model_are_dropped() -> None:
    device = make_device("dev-1")
    register_model("kws")
    ingest = _ingest()
    before = _dropped("unknown_model")
    with transaction.atomic():
        ingest.add(
            device=device,
            batch=batch(sample(model="nosuchmodel"), sample(model="kws")),
            received_at=now_utc(),
        )
        ingest.flush()
    assert set(Sample.objects.values_list("model", flat=True)) == {"kws"}
    assert _dropped("unknown_model") == before + 1


def test_a_model_registered_later_is_accepted_once_the_cache_expires() -> None:
    device = make_device("dev-1")
    ingest = _ingest()
    with transaction.atomic():
        ingest.add(device=device, batch=batch(sample(model="vad")), received_at=now_utc())
        ingest.flush()
    register_model("vad")
    with transaction.atomic():
        ingest.add(device=device, batch=batch(sample(model="vad")), received_at=now_utc())
        ingest.flush()
    assert Sample.objects.filter(model="vad").count() == 2


def test_the_buffer_bound_drops_and_counts_instead_of_growing() -> None:
    device = make_device("dev-1")
    register_model("kws")
    ingest = _ingest(max_buffer_rows=4)
    before = _dropped("backpressure")
    with transaction.atomic():
        for _ in range(3):  # 2 rows each: the third message does not fit
            ingest.add(device=device, batch=batch(sample()), received_at=now_utc())
        assert ingest.buffered_rows == 4
        ingest.flush()
    assert Sample.objects.count() == 4
    assert _dropped("backpressure") == before + 1


def test_a_rolled_back_batch_stores_and_counts_nothing_and_is_discarded() -> None:
    device = make_device("dev-1")
    register_model("kws")
    ingest = _ingest()
    stored_before = _metric("fleet_telemetry_samples_stored_total")
    stale_before = _dropped("stale_timestamp")

    def batch_then_failed_commit() -> None:
        with transaction.atomic():
            ingest.add(
                device=device,
                batch=batch(sample(), sample(ts=now_utc() - years(2))),
                received_at=now_utc(),
            )
            ingest.flush()
            raise RuntimeError("the commit fails")

    with pytest.raises(RuntimeError):
        batch_then_failed_commit()
    ingest.discard()
    assert Sample.objects.count() == 0
    assert _metric("fleet_telemetry_samples_stored_total") == stored_before
    assert _dropped("stale_timestamp") == stale_before
    # and the next batch starts empty
    with transaction.atomic():
        ingest.flush()
    assert Sample.objects.count() == 0


def test_an_unreachable_database_raises_for_a_retry_and_keeps_nothing_twice() -> None:
    device = make_device("dev-1")
    register_model("kws")
    calls: list[int] = []

    def flaky_write(rows: list) -> None:
        calls.append(len(rows))
        if len(calls) == 1:
            raise OperationalError("server closed the connection")
        rows_write(rows)

    ingest = _ingest(write=flaky_write)
    message = batch(sample())

    def one_batch() -> None:
        with transaction.atomic():
            ingest.add(device=device, batch=message, received_at=now_utc())
            ingest.flush()

    with pytest.raises(OperationalError):
        one_batch()
    ingest.discard()  # what the worker does before retrying the batch
    one_batch()
    assert calls == [2, 2]
    assert Sample.objects.count() == 2


def test_rows_the_database_refuses_are_dropped_and_counted_not_raised() -> None:
    device = make_device("dev-1")
    register_model("kws")

    def refusing_write(rows: list) -> None:
        raise DatabaseError("value out of range")

    ingest = _ingest(write=refusing_write)
    before = _dropped("database_refused")
    with transaction.atomic():
        ingest.add(device=device, batch=batch(sample(), sample()), received_at=now_utc())
        ingest.flush()
        make_device("dev-2")  # the transaction is still usable
    assert _dropped("database_refused") == before + 2
    assert Sample.objects.count() == 0
