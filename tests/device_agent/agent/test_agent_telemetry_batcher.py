"""Batching of applications' samples (device_agent/telemetry.py, pure): a model's batch is
due at N samples or T seconds, whichever comes first; what waits is bounded and every drop
is counted; payloads never exceed 64 KiB and parse as the server parses them."""

from datetime import UTC, datetime

from device_agent.protocol.messages import (
    MAX_METRICS,
    MAX_PAYLOAD_BYTES,
    TelemetrySample,
    parse_telemetry,
)
from device_agent.telemetry import Backlog, Batcher, BatchPolicy, Payload, encode_batches

NOW = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)


def sample(model: str = "kws", n_metrics: int = 2, value: float = 1.5) -> TelemetrySample:
    metrics = {"latency_ms": value, "confidence": 0.5}
    for i in range(n_metrics - 2):
        metrics[f"metric_with_a_long_descriptive_name_number_{i:03d}_{'x' * 14}"] = value + i
    return TelemetrySample(
        model=model, version="1.4.0", rollout_id="r-9", arm="B", metrics=metrics, ts=NOW
    )


def decoded(payloads: list[Payload]) -> list[TelemetrySample]:
    return [s for p in payloads for s in parse_telemetry(p.data).samples]


def test_a_batch_is_due_at_n_samples() -> None:
    batcher = Batcher(BatchPolicy(max_samples=3, max_age_s=60))
    for i in range(2):
        batcher.add(sample(value=i), now=100.0 + i)
    assert batcher.take_due(101.5) == []
    assert batcher.queued == 2

    batcher.add(sample(value=2), now=102.0)
    (payload,) = batcher.take_due(102.0)

    assert payload.samples == 3
    assert [s.metrics["latency_ms"] for s in decoded([payload])] == [0.0, 1.0, 2.0]
    assert batcher.queued == 0
    assert batcher.next_due() is None


def test_a_batch_is_due_t_seconds_after_its_first_sample() -> None:
    batcher = Batcher(BatchPolicy(max_samples=50, max_age_s=5.0))
    batcher.add(sample(), now=100.0)
    batcher.add(sample(), now=104.0)
    assert batcher.next_due() == 105.0
    assert batcher.take_due(104.9) == []

    (payload,) = batcher.take_due(105.0)
    assert payload.samples == 2

    # the next batch's clock starts with its own first sample
    batcher.add(sample(), now=106.0)
    assert batcher.next_due() == 111.0


def test_models_are_batched_separately() -> None:
    batcher = Batcher(BatchPolicy(max_samples=2, max_age_s=60))
    batcher.add(sample("kws"), now=0)
    batcher.add(sample("vad"), now=0)
    assert batcher.take_due(1) == []
    batcher.add(sample("vad"), now=1)

    (payload,) = batcher.take_due(1)

    assert {s.model for s in decoded([payload])} == {"vad"}
    rest = batcher.take_due(1, everything=True)
    assert [s.model for s in decoded(rest)] == ["kws"]


def test_the_queue_is_bounded_and_drops_are_counted() -> None:
    batcher = Batcher(BatchPolicy(max_samples=500, max_age_s=60, max_queued=10))
    taken = [batcher.add(sample(), now=0) for _ in range(15)]
    assert taken == [True] * 10 + [False] * 5
    assert (batcher.queued, batcher.dropped) == (10, 5)
    assert sum(p.samples for p in batcher.take_due(0, everything=True)) == 10


def test_a_batch_too_large_for_one_message_is_split_below_64_kib() -> None:
    # given 50 samples of 32 long-named metrics each: ~100 KiB as one message
    batcher = Batcher(BatchPolicy(max_samples=50, max_age_s=60))
    for i in range(50):
        batcher.add(sample(n_metrics=MAX_METRICS, value=float(i)), now=0)

    # when the batch is due
    payloads = batcher.take_due(0)

    # then it went out as several messages, each within the limit, nothing lost or reordered
    assert len(payloads) >= 2
    assert all(len(p.data) <= MAX_PAYLOAD_BYTES for p in payloads)
    samples = decoded(payloads)
    assert [s.metrics["latency_ms"] for s in samples] == [float(i) for i in range(50)]
    assert sum(p.samples for p in payloads) == 50
    assert batcher.unsendable == 0


def test_encode_batches_respects_a_smaller_limit_and_counts_what_cannot_fit() -> None:
    samples = [sample(value=float(i)) for i in range(20)]
    payloads, unsendable = encode_batches(samples, max_bytes=1000)
    assert unsendable == 0
    assert all(len(p.data) <= 1000 for p in payloads)
    assert [s.metrics["latency_ms"] for s in decoded(payloads)] == [float(i) for i in range(20)]

    payloads, unsendable = encode_batches(samples[:3], max_bytes=50)
    assert (payloads, unsendable) == ([], 3)


def test_payloads_are_what_the_server_parses() -> None:
    (payload,) = encode_batches([sample()])[0]
    batch = parse_telemetry(payload.data)
    (got,) = batch.samples
    assert (got.model, got.version, got.rollout_id, got.arm, got.ts) == (
        "kws",
        "1.4.0",
        "r-9",
        "B",
        NOW,
    )
    assert got.metrics == {"latency_ms": 1.5, "confidence": 0.5}


def test_the_backlog_keeps_the_newest_within_its_bytes_and_counts_the_rest() -> None:
    backlog = Backlog(max_bytes=1000)
    backlog.extend(Payload(bytes([i]) * 300, samples=i + 1) for i in range(5))

    # 5 x 300 bytes > 1000: the two oldest went
    assert len(backlog) == 3
    assert backlog.bytes == 900
    assert (backlog.dropped_payloads, backlog.dropped_samples) == (2, 1 + 2)
    first = backlog.pop()
    assert first is not None
    assert first.data[0] == 2

    # a payload the link did not take goes back to the front
    backlog.push_back(first)
    again = backlog.pop()
    assert again is not None
    assert again.data[0] == 2
    assert [p.data[0] for p in iter(backlog.pop, None)] == [3, 4]
    assert backlog.bytes == 0
