"""telemetry.batch_histogram.BatchHistogram exposes what a prometheus_client Histogram
fed the same observations one by one exposes, in both exposition formats, built on
prometheus_client's public collector API only."""

import re

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from telemetry import exposition, metrics
from telemetry.batch_histogram import BatchHistogram

LABELS = ("model", "version", "arm")
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Binary fractions, so the sum does not depend on the order of the additions; bounds
# themselves (0.25, 0.5, 1.0, 2.5) check that a bucket includes its upper bound.
BATCHES: list[tuple[tuple[str, ...], list[float]]] = [
    (("kws", "1.3.0", "A"), [0.25, 0.0009765625, 3.0, 0.5, 0.03125, 1.0, 2.5, 0.0078125]),
    (("kws", "1.4.0", "B"), [0.125, 0.125, 7.5]),
    (("kws", "1.3.0", "A"), [0.0625, 0.5, 0.001953125]),
    (("vad", "2.0.0", "none"), []),  # an empty batch creates no series
    (("vad", "2.0.0", "none"), [0.015625]),
]
_CREATED = re.compile(r"^(\S+_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)


def _pair(
    labels: tuple[str, ...] = LABELS, bounds: tuple[float, ...] = BOUNDS
) -> tuple[CollectorRegistry, Histogram, CollectorRegistry, BatchHistogram]:
    old, new = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("t_latency_seconds", "Doc.", labels, buckets=bounds, registry=old)
    batched = BatchHistogram("t_latency_seconds", "Doc.", labels, buckets=bounds, registry=new)
    return old, reference, new, batched


def _feed(
    reference: Histogram,
    batched: BatchHistogram,
    batches: list[tuple[tuple[str, ...], list[float]]],
) -> None:
    for labels, values in batches:
        for value in values:
            (reference.labels(*labels) if labels else reference).observe(value)
        batched.observe_values(labels, list(values))


def _same_but_created(old: bytes, new: bytes) -> None:
    # `_created` is each series' creation time: equal lines, not equal clocks.
    assert _CREATED.sub(r"\1 T", old.decode()) == _CREATED.sub(r"\1 T", new.decode())
    assert len(_CREATED.findall(old.decode())) == len(_CREATED.findall(new.decode()))


def test_labelled_exposition_equals_a_prometheus_histogram() -> None:
    old, reference, new, batched = _pair()
    _feed(reference, batched, BATCHES)
    _same_but_created(generate_latest(old), generate_latest(new))
    _same_but_created(generate_openmetrics(old), generate_openmetrics(new))
    assert new.get_sample_value(
        "t_latency_seconds_bucket", {"model": "kws", "version": "1.3.0", "arm": "A", "le": "0.5"}
    ) == old.get_sample_value(
        "t_latency_seconds_bucket", {"model": "kws", "version": "1.3.0", "arm": "A", "le": "0.5"}
    )


def test_unlabelled_exposition_equals_a_prometheus_histogram_before_and_after() -> None:
    old, reference, new, batched = _pair(labels=(), bounds=(0.005, 0.01, 60.0))
    _same_but_created(generate_latest(old), generate_latest(new))  # zeros from the start
    _feed(reference, batched, [((), [0.0078125, 0.5, 128.0, 0.00390625])])
    _same_but_created(generate_latest(old), generate_latest(new))
    assert new.get_sample_value("t_latency_seconds_count") == 4


def test_created_series_can_be_turned_off_like_prometheus_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "true")
    _, _, new, batched = _pair()
    batched.observe_values(("kws", "1.3.0", "A"), [0.5])
    assert b"_created" not in generate_latest(new)
    assert (
        new.get_sample_value(
            "t_latency_seconds_count", {"model": "kws", "version": "1.3.0", "arm": "A"}
        )
        == 1
    )


def test_the_registry_refuses_a_second_metric_of_the_same_name() -> None:
    _, _, new, _ = _pair()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram("t_latency_seconds", "Doc.", buckets=BOUNDS, registry=new)


def test_a_wrong_number_of_label_values_is_refused() -> None:
    _, _, _, batched = _pair()
    with pytest.raises(ValueError, match="label values"):
        batched.observe_values(("kws",), [0.5])


def test_label_sets_beyond_the_cap_fold_into_other() -> None:
    registry = CollectorRegistry()
    histogram = BatchHistogram(
        "t_capped", "", LABELS, buckets=(1.0,), max_label_sets=2, registry=registry
    )
    for version in ("1.0.0", "1.0.1", "1.0.2", "1.0.3"):
        histogram.observe_values(("kws", version, "A"), [0.5])
    versions = {
        s.labels["version"]
        for family in registry.collect()
        for s in family.samples
        if s.name == "t_capped_count"
    }
    assert versions == {"1.0.0", "1.0.1", "other"}
    assert (
        registry.get_sample_value(
            "t_capped_count", {"model": "kws", "version": "other", "arm": "other"}
        )
        == 2
    )


def test_the_web_process_leaves_the_bridge_histograms_out() -> None:
    names = {"fleet_model_latency_seconds", "fleet_telemetry_lag_seconds", "fleet_bridge_messages"}
    assert names <= metrics.BRIDGE_ONLY
    metrics.MODEL_LATENCY_SECONDS.observe_values(("kws", "9.9.9", "r-9", "A"), [0.5])
    body = exposition.web_exposition().decode()
    assert "fleet_model_latency_seconds" not in body
    assert "fleet_bridge_messages" not in body
