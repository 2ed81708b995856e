"""A telemetry message is stored once however often it arrives: the broker redelivers a
QoS 1 message the bridge had not acknowledged, and replays a retained one to each new
subscription. The bridge keys each message by the sha256 of its payload."""

from datetime import timedelta

import pytest
from django.db import transaction
from prometheus_client import REGISTRY
from telemetry_support import batch, make_device, now_utc, register_model, sample

from fleet.bridge.client import InboundMessage
from fleet.bridge.handlers import Dispatcher
from telemetry.ingest import TelemetryIngest
from telemetry.models import ReceivedBatch, Sample
from telemetry.retention import telemetry_retention_apply

pytestmark = pytest.mark.django_db(transaction=True)


def _duplicates() -> float:
    labels = {"reason": "duplicate"}
    return REGISTRY.get_sample_value("fleet_telemetry_samples_dropped_total", labels) or 0.0


def _ingest() -> TelemetryIngest:
    return TelemetryIngest(
        max_age=timedelta(days=7), max_future=timedelta(minutes=10), model_cache_seconds=0
    )


def _message(payload: bytes) -> InboundMessage:
    return InboundMessage(
        topic="fleet/v1/devices/dev-1/telemetry",
        payload=payload,
        qos=1,
        retain=False,
        mid=1,
        generation=1,
        received_at=now_utc(),
    )


def _bridge_batch(dispatcher: Dispatcher, *payloads: bytes) -> None:
    # As the bridge's worker and writer do: handle in one transaction, write in another.
    with transaction.atomic():
        dispatcher.begin(deferred=True)
        for payload in payloads:
            assert dispatcher.handle(_message(payload)).result == "accepted"
        dispatcher.finish()
        taken = dispatcher.telemetry.take()
    with transaction.atomic():
        dispatcher.telemetry.write(taken)


def test_a_redelivered_message_is_stored_once() -> None:
    # given a message the bridge stored (two samples, two metrics each)
    make_device("dev-1")
    register_model("kws")
    now = now_utc()
    payload = batch(
        sample(ts=now, latency_ms=10, confidence=0.5),
        sample(ts=now + timedelta(seconds=1), latency_ms=11, confidence=0.6),
    ).to_json()
    other = batch(sample(ts=now, latency_ms=12, confidence=0.7)).to_json()
    dispatcher = Dispatcher(telemetry=_ingest(), device_cache_seconds=0)
    _bridge_batch(dispatcher, payload)
    assert Sample.objects.count() == 4
    before = _duplicates()

    # when the broker delivers it again, in a later batch with a new message
    _bridge_batch(dispatcher, payload, other)

    # then only the new message's rows are added, and the repeat is counted
    assert Sample.objects.count() == 6
    assert _duplicates() - before == 2
    assert ReceivedBatch.objects.count() == 2


def test_a_message_repeated_within_one_batch_is_stored_once() -> None:
    make_device("dev-1")
    register_model("kws")
    payload = batch(sample(ts=now_utc(), latency_ms=10, confidence=0.5)).to_json()
    dispatcher = Dispatcher(telemetry=_ingest(), device_cache_seconds=0)

    _bridge_batch(dispatcher, payload, payload)

    assert Sample.objects.count() == 2


def test_equal_samples_of_another_device_are_their_own() -> None:
    make_device("dev-1")
    register_model("kws")
    other_device = make_device("dev-2")
    payload = batch(sample(ts=now_utc(), latency_ms=10, confidence=0.5)).to_json()
    dispatcher = Dispatcher(telemetry=_ingest(), device_cache_seconds=0)
    _bridge_batch(dispatcher, payload)
    with transaction.atomic():
        dispatcher.begin(deferred=True)
        dispatcher.handle(
            InboundMessage(
                topic="fleet/v1/devices/dev-2/telemetry",
                payload=payload,
                qos=1,
                retain=False,
                mid=2,
                generation=1,
                received_at=now_utc(),
            )
        )
        taken = dispatcher.telemetry.take()
    with transaction.atomic():
        dispatcher.telemetry.write(taken)
    assert Sample.objects.filter(device_id=other_device.pk).count() == 2
    assert Sample.objects.count() == 4


def test_retention_forgets_keys_older_than_the_sample_window(settings) -> None:
    device = make_device("dev-1")
    now = now_utc()
    ReceivedBatch.objects.create(device=device, digest="a" * 64, received_at=now)
    ReceivedBatch.objects.create(
        device=device,
        digest="b" * 64,
        received_at=now - settings.FLEET_TELEMETRY_MAX_AGE - timedelta(days=1),
    )
    telemetry_retention_apply(now=now)
    assert list(ReceivedBatch.objects.values_list("digest", flat=True)) == ["a" * 64]
