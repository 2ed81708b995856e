"""Handing telemetry to MQTT: nothing goes out while the link is down (a bounded backlog
waits, its drops counted), at most `telemetry_max_inflight` payloads wait for their
acknowledgement, and stopping the agent sends what is still queued."""

from pathlib import Path

from agent_telemetry import ListOut, metrics_service, wait_until

from device_agent.metrics_client import report
from device_agent.metrics_server import MetricsService
from device_agent.protocol.messages import parse_telemetry


def report_each(service: MetricsService, samples: list[dict[str, float]]) -> None:
    """Report one at a time: a burst would overflow the socket's queue (at most
    net.unix.max_dgram_qlen datagrams, 10 by default), and report() does not wait."""
    for metrics in samples:
        before = service.counters.received
        assert report("kws", metrics, socket_path=service.socket_path)
        wait_until(lambda: service.counters.received > before, "the sample read")  # noqa: B023


def test_offline_samples_wait_in_the_backlog_then_go_out_in_order(tmp_path: Path) -> None:
    out = ListOut()
    out.up = False
    with metrics_service(
        tmp_path / "agent", out=out, telemetry_batch_samples=5, telemetry_batch_seconds=60
    ) as service:
        report_each(service, [{"latency_ms": float(i)} for i in range(20)])
        wait_until(lambda: len(service.backlog) == 4, "four batches in the backlog")
        assert out.payloads == []

        # when the link comes back
        out.up = True
        wait_until(lambda: len(out.payloads) == 4, "the backlog sent")
    assert [s.metrics["latency_ms"] for s in out.samples()] == [float(i) for i in range(20)]


def test_a_long_outage_keeps_the_newest_batches_and_counts_the_dropped(tmp_path: Path) -> None:
    out = ListOut()
    out.up = False
    with metrics_service(
        tmp_path / "agent",
        out=out,
        telemetry_batch_samples=1,
        telemetry_backlog_bytes=65536,
    ) as service:
        metrics = {f"metric_{i:02d}_{'x' * 50}": float(i) for i in range(30)}
        # ~2.5 KiB each: 150 KiB in all
        report_each(service, [{**metrics, "seq": float(i)} for i in range(60)])
        wait_until(lambda: service.batcher.queued == 0, "every batch in the backlog")
        assert service.backlog.bytes <= 65536
        dropped = service.backlog.dropped_samples
        assert dropped > 0
        assert dropped + len(service.backlog) == 60
        stats = service.stats()
        assert stats["dropped"] == {
            "queue_full": 0,
            "backlog_full": dropped,
            "too_large": 0,
            "unconfirmed_full": 0,
        }

        out.up = True
        wait_until(lambda: len(out.payloads) == 60 - dropped, "what was kept sent")
    # the newest were kept, in order
    seqs = [s.metrics["seq"] for s in out.samples()]
    assert seqs == [float(i) for i in range(dropped, 60)]


def test_at_most_max_inflight_payloads_wait_for_the_broker(tmp_path: Path) -> None:
    out = ListOut()
    out.ack = False
    with metrics_service(
        tmp_path / "agent",
        out=out,
        telemetry_batch_samples=1,
        telemetry_max_inflight=3,
    ) as service:
        report_each(service, [{"latency_ms": float(i)} for i in range(10)])
        wait_until(lambda: len(out.payloads) == 3, "a full window")
        assert len(service.backlog) == 7
        service.stop.wait(0.3)
        assert len(out.payloads) == 3  # no acknowledgement, nothing more

        # acknowledgements open the window again
        out.ack = True
        for _ in range(3):
            service._on_ack()
        wait_until(lambda: len(out.payloads) == 10, "the rest sent")
        assert service.stats()["in_flight"] == 0


def test_stopping_sends_what_is_still_batched(tmp_path: Path) -> None:
    out = ListOut()
    with metrics_service(
        tmp_path / "agent", out=out, telemetry_batch_samples=50, telemetry_batch_seconds=3600
    ) as service:
        report_each(service, [{"latency_ms": float(i)} for i in range(3)])
        wait_until(lambda: service.batcher.queued == 3, "three samples batched")
        assert out.payloads == []
    (payload,) = out.payloads
    assert len(parse_telemetry(payload).samples) == 3
