"""Hostile datagrams on the metrics socket: each is refused for its reason and counted,
none reaches `telemetry`, and the socket keeps serving well-behaved applications."""

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_telemetry import KWS_TAGS, ListOut, metrics_service, wait_until

from device_agent.telemetry import Refusal, sample_from_datagram

# Now, so that the socket test (the agent's real clock) refuses the same timestamps.
NOW = datetime.now(UTC).replace(microsecond=0)


def dgram(obj: object) -> bytes:
    return json.dumps(obj).encode()


def good(**change: object) -> dict[str, object]:
    sample: dict[str, object] = {"model": "kws", "metrics": {"latency_ms": 12.5}}
    sample.update(change)
    return sample


HOSTILE: list[tuple[str, bytes, Refusal]] = [
    ("empty", b"", Refusal.MALFORMED),
    ("not-json", b"{model: kws", Refusal.MALFORMED),
    ("binary-garbage", bytes(range(256)) * 4, Refusal.MALFORMED),
    ("not-utf8", b'{"model": "kws\xff", "metrics": {"a": 1}}', Refusal.MALFORMED),
    ("array", dgram([good()]), Refusal.MALFORMED),
    ("string", dgram("kws latency_ms=3"), Refusal.MALFORMED),
    ("nan-literal", b'{"model":"kws","metrics":{"latency_ms":NaN}}', Refusal.MALFORMED),
    ("infinity", b'{"model":"kws","metrics":{"latency_ms":-Infinity}}', Refusal.MALFORMED),
    ("overflowing-float", b'{"model":"kws","metrics":{"latency_ms":1e999}}', Refusal.MALFORMED),
    ("duplicate-key", b'{"model":"kws","model":"vad","metrics":{"a":1}}', Refusal.MALFORMED),
    ("deep-and-large", b'{"model":"kws","metrics":' + b"[" * 100_000, Refusal.TOO_LARGE),
    ("deep-arrays", b"[" * 4000 + b"]" * 4000, Refusal.MALFORMED),
    ("deep-objects", b'{"a":' * 1300 + b"1" + b"}" * 1300, Refusal.MALFORMED),
    ("oversized", dgram(good(pad="x" * 9000)), Refusal.TOO_LARGE),
    ("missing-metrics", dgram({"model": "kws"}), Refusal.MALFORMED),
    ("empty-metrics", dgram(good(metrics={})), Refusal.MALFORMED),
    ("metrics-list", dgram(good(metrics=[["latency_ms", 1]])), Refusal.MALFORMED),
    ("unknown-key", dgram(good(device_id="dev-other")), Refusal.MALFORMED),
    ("wrong-version", dgram(good(v=2)), Refusal.MALFORMED),
    ("model-not-a-string", dgram(good(model=["kws"])), Refusal.MALFORMED),
    ("unknown-model", dgram(good(model="vad")), Refusal.UNKNOWN_MODEL),
    ("path-model", dgram(good(model="../kws")), Refusal.UNKNOWN_MODEL),
    ("name-with-space", dgram(good(metrics={"latency ms": 1})), Refusal.BAD_METRIC_NAME),
    ("name-digit-first", dgram(good(metrics={"1st": 1})), Refusal.BAD_METRIC_NAME),
    ("name-too-long", dgram(good(metrics={"m" * 65: 1})), Refusal.BAD_METRIC_NAME),
    ("name-unicode", dgram(good(metrics={"latência": 1})), Refusal.BAD_METRIC_NAME),
    ("name-empty", dgram(good(metrics={"": 1})), Refusal.BAD_METRIC_NAME),
    (
        "too-many-metrics",
        dgram(good(metrics={f"m{i}": i for i in range(33)})),
        Refusal.TOO_MANY_METRICS,
    ),
    ("value-string", dgram(good(metrics={"latency_ms": "12"})), Refusal.BAD_METRIC_VALUE),
    ("value-bool", dgram(good(metrics={"ok": True})), Refusal.BAD_METRIC_VALUE),
    ("value-null", dgram(good(metrics={"latency_ms": None})), Refusal.BAD_METRIC_VALUE),
    ("value-object", dgram(good(metrics={"latency_ms": {"p50": 1}})), Refusal.BAD_METRIC_VALUE),
    ("value-huge-int", dgram(good(metrics={"n": 10**300})), Refusal.BAD_METRIC_VALUE),
    ("ts-text", dgram(good(ts="yesterday")), Refusal.BAD_TIMESTAMP),
    ("ts-local-time", dgram(good(ts=f"{NOW:%Y-%m-%dT%H:%M:%S}+00:00")), Refusal.BAD_TIMESTAMP),
    ("ts-negative", dgram(good(ts=-1)), Refusal.BAD_TIMESTAMP),
    ("ts-bool", dgram(good(ts=True)), Refusal.BAD_TIMESTAMP),
    ("ts-far-past", dgram(good(ts=NOW.timestamp() - 86400)), Refusal.BAD_TIMESTAMP),
    ("ts-future", dgram(good(ts=NOW.timestamp() + 3600)), Refusal.BAD_TIMESTAMP),
]


@pytest.mark.parametrize(("data", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_each_hostile_datagram_is_refused_for_its_reason(data: bytes, reason: Refusal) -> None:
    assert sample_from_datagram(data, tags=KWS_TAGS, now=NOW) is reason


def test_a_well_formed_sample_is_tagged_with_what_the_agent_knows() -> None:
    ts = NOW - timedelta(seconds=30)
    data = dgram({"model": "kws", "metrics": {"latency_ms": 12.5, "top1": 3}, "ts": ts.timestamp()})

    sample = sample_from_datagram(data, tags=KWS_TAGS, now=NOW)

    assert not isinstance(sample, Refusal)
    assert (sample.model, sample.version, sample.rollout_id, sample.arm) == (
        "kws",
        "1.4.0",
        "r-9",
        "B",
    )
    assert sample.metrics == {"latency_ms": 12.5, "top1": 3.0}
    assert sample.ts == ts
    # without ts, the time the agent read it; an RFC 3339 ts is taken as well
    no_ts = sample_from_datagram(dgram(good()), tags=KWS_TAGS, now=NOW)
    assert not isinstance(no_ts, Refusal)
    assert no_ts.ts == NOW
    text = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    text_ts = sample_from_datagram(dgram(good(ts=text)), tags=KWS_TAGS, now=NOW)
    assert not isinstance(text_ts, Refusal)
    assert text_ts.ts == ts


def test_hostile_datagrams_on_the_socket_are_counted_and_never_published(
    tmp_path: Path,
) -> None:
    out = ListOut()
    with (
        metrics_service(tmp_path / "agent", out=out, telemetry_batch_seconds=0.05) as service,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as app,
    ):
        assert service.socket_path is not None
        app.connect(str(service.socket_path))
        # when an application (or anyone who can reach the socket) sends garbage
        for _, data, _ in HOSTILE:
            app.send(data)
        app.send(b"x" * 200_000)  # larger than the agent ever reads: truncated, refused
        wait_until(lambda: service.counters.received == len(HOSTILE) + 1, "every datagram read")

        # then each is counted under its reason and nothing is published
        expected: dict[str, int] = {reason.value: 0 for reason in Refusal}
        for _, _, reason in HOSTILE:
            expected[reason.value] += 1
        expected[Refusal.TOO_LARGE.value] += 1
        assert service.counters.refused == expected
        assert service.counters.accepted == 0
        assert out.payloads == []

        # and the socket still serves a well-behaved application
        app.send(dgram(good()))
        wait_until(lambda: out.payloads, "the good sample published")
    (published,) = out.samples()
    assert (published.model, published.metrics) == ("kws", {"latency_ms": 12.5})
    assert service.errors == 0
