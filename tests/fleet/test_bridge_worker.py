"""The inbound queue: QoS 0 beyond the bound is dropped and counted; QoS 1 always goes in
(the broker's Receive Maximum bounds it)."""

from datetime import UTC, datetime

from bridge_harness import metric

from fleet.bridge.client import InboundMessage
from fleet.bridge.handlers import DiscardTelemetry, Dispatcher
from fleet.bridge.worker import InboundWorker


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
        ack=lambda message: True,
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
