"""The inbound queue: QoS 0 beyond the bound is dropped and counted; QoS 1 always goes in
(the broker's Receive Maximum bounds it). A message the database refuses is dropped alone."""

from datetime import UTC, datetime

import pytest
from bridge_harness import event_payload, make_device, metric
from django.db import connection

from fleet import reports
from fleet.bridge.client import InboundMessage
from fleet.bridge.handlers import DiscardTelemetry, Dispatcher
from fleet.bridge.worker import InboundWorker
from fleet.models import DeviceEvent


def _message(qos: int) -> InboundMessage:
    return InboundMessage(
        topic="fleet/v1/devices/dev-1/telemetry",
        payload=b"{}",
        qos=qos,
        retain=False,
        mid=1,
        generation=1,
        received_at=datetime(2026, 11, 22, tzinfo=UTC),
    )


def test_qos0_beyond_the_queue_bound_is_dropped_as_backpressure() -> None:
    worker = InboundWorker(  # never started: nothing drains the queue
        dispatcher=Dispatcher(telemetry=DiscardTelemetry(), device_cache_seconds=0),
        ack=lambda messages: len(messages),
        queue_size=2,
        batch_size=10,
        seen_flush_seconds=1,
    )
    before = metric("fleet_bridge_dropped_total", channel="telemetry", reason="backpressure")
    for _ in range(5):
        worker.offer(_message(qos=0))
    worker.offer(_message(qos=1))
    assert worker._queue.qsize() == 3
    assert (
        metric("fleet_bridge_dropped_total", channel="telemetry", reason="backpressure")
        == before + 3
    )


def _event_message(device_id: str, seq: int, mid: int) -> InboundMessage:
    return InboundMessage(
        topic=f"fleet/v1/devices/{device_id}/events",
        payload=event_payload(seq),
        qos=1,
        retain=False,
        mid=mid,
        generation=1,
        received_at=datetime(2026, 11, 22, 10, tzinfo=UTC),
    )


@pytest.mark.django_db(transaction=True)
def test_a_message_the_database_refuses_is_dropped_alone(monkeypatch) -> None:
    # given a batch of three events, the second of which makes the database fail (which,
    # on PostgreSQL, also aborts the transaction the batch is handled in)
    make_device("dev-1")
    real_record, real_batch = reports.device_event_record, reports.devices_event_record

    def refuse(seqs: list[int]) -> None:
        if 2 in seqs:
            table = connection.ops.quote_name(DeviceEvent._meta.db_table)
            with connection.cursor() as cursor:  # IntegrityError: seq is NOT NULL
                cursor.execute(f"INSERT INTO {table} (seq) VALUES (NULL)")  # noqa: S608

    def record(*, device, event):
        refuse([event.seq])
        return real_record(device=device, event=event)

    def record_batch(*, reports, news=True):
        refuse([event.seq for _, event in reports])
        return real_batch(reports=reports, news=news)

    # one by one, and the batch's events together (the bridge's usual path, tried first)
    monkeypatch.setattr(reports, "device_event_record", record)
    monkeypatch.setattr(reports, "devices_event_record", record_batch)
    acked: list[int] = []
    worker = InboundWorker(
        dispatcher=Dispatcher(telemetry=DiscardTelemetry(), device_cache_seconds=0),
        ack=lambda messages: acked.extend(m.mid for m in messages),
        queue_size=10,
        batch_size=10,
        seen_flush_seconds=1,
    )
    batch = [_event_message("dev-1", seq, mid=seq) for seq in (1, 2, 3)]
    before = metric("fleet_bridge_dropped_total", channel="events", reason="internal_error")

    # when the worker checks and stores the batch
    checked = worker._check(batch)
    assert checked is not None
    assert worker._store(checked)

    # then the other two are stored, the failing one is dropped and counted, and all three
    # are acknowledged in order (a message that can never be stored must not come back)
    assert sorted(DeviceEvent.objects.values_list("seq", flat=True)) == [1, 3]
    assert [outcome.result for outcome, _ in checked.handled] == ["accepted", "error", "accepted"]
    assert (
        metric("fleet_bridge_dropped_total", channel="events", reason="internal_error")
        == before + 1
    )
    assert acked == [1, 2, 3]
