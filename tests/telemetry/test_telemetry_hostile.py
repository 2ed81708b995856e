"""Hostile telemetry through a real Mosquitto into the bridge: malformed JSON, 10 MB,
NaN/Infinity, timestamps years away, another device's id, unknown devices and models.
Each is dropped and counted by reason, nothing of it is stored, and the bridge goes on
storing valid telemetry afterwards."""

import contextlib
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from telemetry_support import (
    make_device,
    now_utc,
    payload,
    raw_payload,
    raw_sample_dict,
    register_model,
    sample,
    years,
)
from telemetry_system import device_client, publish_raw

from device_agent.protocol.messages import format_timestamp
from device_agent.protocol.topics import Channel, topic_for
from fleet.bridge.config import BridgeConfig, BrokerAddress
from fleet.bridge.runner import Bridge
from telemetry.models import Sample

pytestmark = pytest.mark.django_db(transaction=True)

TOPIC = topic_for("dev-1", Channel.TELEMETRY)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _counts() -> dict[str, float]:
    bridge = {
        reason: _value("fleet_bridge_dropped_total", channel="telemetry", reason=reason)
        for reason in (
            "malformed",
            "payload_too_large",
            "topic_mismatch",
            "unknown_device",
            "revoked_device",
        )
    }
    samples = {
        reason: _value("fleet_telemetry_samples_dropped_total", reason=reason)
        for reason in ("stale_timestamp", "future_timestamp", "unknown_model")
    }
    return {**{f"message:{k}": v for k, v in bridge.items()}, **samples}


@contextlib.contextmanager
def _bridge(port: int) -> Iterator[Bridge]:
    config = BridgeConfig(
        broker=BrokerAddress(host="127.0.0.1", port=port, tls=False, username=None, password=None),
        client_id=f"bridge-{uuid.uuid4().hex[:8]}",
        seen_flush_seconds=0.2,
    )
    bridge = Bridge(config)  # the default sink: telemetry.ingest
    bridge.start()
    try:
        assert bridge.wait_subscribed(10)
        yield bridge
    finally:
        bridge.stop()


def _nan_payload(literal: str) -> bytes:
    return (
        b'{"v": 1, "samples": [{"model": "kws", "version": "1.4.0", "rollout_id": null, '
        b'"arm": null, "metrics": {"latency_ms": '
        + literal.encode()
        + b'}, "ts": "2026-01-01T00:00:00Z"}]}'
    )


def _wait(predicate, timeout: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_hostile_telemetry_is_dropped_by_reason_and_never_stored(mosquitto) -> None:
    # given an enrolled device, a revoked one, a registered model and a running bridge
    make_device("dev-1")
    make_device("dev-2")
    make_device("dev-gone", revoked_at=now_utc())
    register_model("kws")
    now = now_utc()
    hostile: list[tuple[str, bytes, str]] = [
        (TOPIC, b"{not json", "message:malformed"),
        (TOPIC, b"\xff\xfe garbage", "message:malformed"),
        (TOPIC, b"[1, 2, 3]", "message:malformed"),
        (TOPIC, b"x" * (10 * 1024 * 1024), "message:payload_too_large"),
        (TOPIC, _nan_payload("NaN"), "message:malformed"),
        (TOPIC, _nan_payload("Infinity"), "message:malformed"),
        (TOPIC, _nan_payload("-Infinity"), "message:malformed"),
        (TOPIC, _nan_payload("1e999"), "message:malformed"),
        (TOPIC, raw_payload(raw_sample_dict(metrics={})), "message:malformed"),
        (TOPIC, raw_payload(raw_sample_dict(metrics={"latency_ms": "12"})), "message:malformed"),
        (TOPIC, raw_payload(raw_sample_dict(), device_id="dev-2"), "message:topic_mismatch"),
        (
            topic_for("dev-nobody", Channel.TELEMETRY),
            raw_payload(raw_sample_dict()),
            "message:unknown_device",
        ),
        (
            topic_for("dev-gone", Channel.TELEMETRY),
            raw_payload(raw_sample_dict()),
            "message:revoked_device",
        ),
        (TOPIC, payload(sample(ts=now - years(3))), "stale_timestamp"),
        (TOPIC, payload(sample(ts=now + years(4))), "future_timestamp"),
        (TOPIC, payload(sample(ts=now + timedelta(hours=1))), "future_timestamp"),
        (
            TOPIC,
            raw_payload(raw_sample_dict(ts=format_timestamp(now.replace(year=9999)))),
            "future_timestamp",
        ),
        (TOPIC, payload(sample(model="nosuchmodel")), "unknown_model"),
    ]
    expected: dict[str, float] = {}
    for _, _, reason in hostile:
        expected[reason] = expected.get(reason, 0) + 1
    before = _counts()
    with _bridge(mosquitto.port) as bridge:
        attacker = device_client(mosquitto.port, "dev-1")
        # when every hostile message is published
        for topic, body, _ in hostile:
            publish_raw(attacker, topic, body)
        # then each is counted under its reason
        want = {k: before[k] + expected.get(k, 0) for k in before}
        assert _wait(lambda: _counts() == want), (_counts(), want)
        # and nothing of it is stored
        assert Sample.objects.count() == 0
        # and the bridge still stores valid telemetry
        publish_raw(attacker, TOPIC, payload(sample(ts=now, latency_ms=7.0)))
        assert _wait(lambda: Sample.objects.filter(metric="latency_ms").count() == 1)
        assert Sample.objects.get(metric="latency_ms").value == 7.0
        assert bridge.worker.alive
        attacker.disconnect()
        attacker.loop_stop()
