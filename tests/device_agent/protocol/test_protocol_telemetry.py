"""Telemetry batches: numbers only, bounded sizes."""

import json
from collections.abc import Callable
from typing import Any

import pytest

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    MAX_METRICS,
    MAX_SAFE_INT,
    MAX_SAMPLES,
    parse_telemetry,
)

Payload = dict[str, Any]
MINIMAL = {
    "model": "k",
    "version": "1.0.0",
    "rollout_id": None,
    "arm": None,
    "metrics": {"x": 1},
    "ts": "2026-11-22T10:01:00Z",
}


def test_round_trip_makes_metrics_floats(example: Callable[[str], Payload]) -> None:
    batch = parse_telemetry(json.dumps(example("telemetry")).encode())

    assert batch.samples[1].metrics == {"latency_ms": 11.0}
    assert type(batch.samples[1].metrics["latency_ms"]) is float
    assert batch.samples[0].arm == "B"
    assert batch.samples[1].rollout_id is None
    assert parse_telemetry(batch.to_json()) == batch


def _metrics(**metrics: Any) -> Callable[[Payload], None]:
    return lambda d: d["samples"][0].update(metrics=metrics)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda d: d.update(samples=[]), id="no-samples"),
        pytest.param(
            lambda d: d.update(samples=[MINIMAL] * (MAX_SAMPLES + 1)), id="too-many-samples"
        ),
        pytest.param(_metrics(), id="no-metrics"),
        pytest.param(_metrics(latency_ms=True), id="bool-metric"),
        pytest.param(_metrics(latency_ms="12"), id="string-metric"),
        pytest.param(_metrics(latency_ms=None), id="null-metric"),
        pytest.param(_metrics(latency_ms=[1]), id="list-metric"),
        pytest.param(_metrics(latency_ms={"p95": 1}), id="nested-metric"),
        pytest.param(_metrics(latency_ms=MAX_SAFE_INT + 1), id="huge-int-metric"),
        pytest.param(_metrics(**{"latency ms": 1}), id="bad-metric-name"),
        pytest.param(
            _metrics(**{f"m{i}": 1 for i in range(MAX_METRICS + 1)}), id="too-many-metrics"
        ),
        pytest.param(lambda d: d["samples"][0].update(version="v1"), id="bad-version"),
        pytest.param(
            lambda d: d["samples"][0].update(ts="2026-11-22T10:01:00+01:00"), id="non-utc-ts"
        ),
        pytest.param(lambda d: d["samples"][0].pop("arm"), id="missing-arm"),
        pytest.param(lambda d: d.update(samples={"0": 1}), id="samples-object"),
    ],
)
def test_refused(example: Callable[[str], Payload], tamper: Callable[[Payload], None]) -> None:
    batch = example("telemetry")
    tamper(batch)

    with pytest.raises(ProtocolError) as caught:
        parse_telemetry(json.dumps(batch).encode())
    assert caught.value.code == ErrorCode.MALFORMED


def test_max_samples_fit_in_a_payload(example: Callable[[str], Payload]) -> None:
    batch = example("telemetry")
    batch["samples"] = [MINIMAL] * MAX_SAMPLES

    assert len(parse_telemetry(json.dumps(batch).encode()).samples) == MAX_SAMPLES


def test_huge_number_literal_refused() -> None:
    # 1e999 is inf to float() and 10**5000 exceeds int's digit limit: both malformed. The
    # telemetry parser decodes floats unchecked and refuses the non-finite ones itself.
    for literal in (b"1e999", b"-1e999", b"1" * 5000, b"NaN", b"Infinity", b"-Infinity"):
        data = (
            b'{"v":1,"samples":[{"model":"kws","version":"1.0.0","rollout_id":null,'
            b'"arm":null,"metrics":{"x":' + literal + b'},"ts":"2026-11-22T10:01:00Z"}]}'
        )
        with pytest.raises(ProtocolError) as caught:
            parse_telemetry(data)
        assert caught.value.code == ErrorCode.MALFORMED
