"""Telemetry is confirmed end to end: each payload carries a random `batch_id` and is
held, and sent again (the same bytes, 5 s after the last try doubling to 60 s, sooner
after a reconnection) until the server names it on `acks`; what is held is bounded in
number and bytes, the oldest dropped first and counted. The clock is injected: nothing
here sleeps."""

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from agent_telemetry import KWS_TAGS, ListOut, agent_config

from device_agent.config import Layout
from device_agent.metrics_server import MetricsService
from device_agent.protocol.messages import EventsAck, TelemetrySample, parse_telemetry
from device_agent.telemetry import Payload, Unconfirmed

ID = "0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def payload(batch_id: str, size: int = 100, samples: int = 1) -> Payload:
    return Payload(b"x" * size, samples, batch_id)


# --- the bookkeeping ---------------------------------------------------------------


def test_a_held_payload_is_due_again_with_doubling_delays_until_confirmed() -> None:
    held = Unconfirmed(max_bytes=10_000, first_s=5, max_s=60)
    p = payload(ID)
    assert held.sent(p, 0.0) == []
    due_at = []
    now = 0.0
    for _ in range(7):
        due = held.next_due()
        assert due is not None
        now = due
        assert held.due(now - 0.001) == []
        assert held.due(now) == [p]
        held.sent(p, now)
        due_at.append(now)
    assert [b - a for a, b in zip([0.0, *due_at], due_at, strict=False)] == [
        5,
        10,
        20,
        40,
        60,
        60,
        60,
    ]
    assert held.resent_payloads == 7
    # confirmed: forgotten, never due again; an unknown id is ignored
    assert held.confirm([ID, "f" * 32]) == 1
    assert (len(held), held.bytes, held.next_due(), held.due(now + 1e6)) == (0, 0, None, [])
    assert held.confirmed_payloads == 1


def test_a_reconnection_makes_every_held_payload_due_from_the_first_delay() -> None:
    held = Unconfirmed(max_bytes=10_000, first_s=5, max_s=60)
    p = payload(ID)
    held.sent(p, 0.0)
    for now in (5.0, 15.0, 35.0):
        held.sent(p, now)  # next due at 75
    held.reconnected(40.0)
    assert held.next_due() == 45.0
    held.sent(p, 45.0)
    assert held.next_due() == 55.0  # the backoff starts again


def test_a_payload_without_an_id_is_not_held() -> None:
    held = Unconfirmed(max_bytes=10_000)
    held.sent(Payload(b"x", 1, None), 0.0)
    assert len(held) == 0


@pytest.mark.parametrize(("max_payloads", "max_bytes"), [(3, 10_000), (100, 350)])
def test_held_payloads_are_bounded_the_oldest_dropped_and_counted(
    max_payloads: int, max_bytes: int
) -> None:
    held = Unconfirmed(max_payloads=max_payloads, max_bytes=max_bytes)
    ids = [f"{i:032x}" for i in range(5)]
    dropped = [held.sent(payload(i, size=100, samples=2), 0.0) for i in ids]
    assert [[d.batch_id for d in each] for each in dropped] == [[], [], [], [ids[0]], [ids[1]]]
    assert (len(held), held.bytes) == (3, 300)
    assert (held.dropped_payloads, held.dropped_samples) == (2, 4)
    assert [p.batch_id for p in held.due(1e6)] == ids[2:]


# --- the metrics service, stepped by hand --------------------------------------------


def service(tmp_path: Path, out: ListOut, clock: Clock, **kwargs: Any) -> MetricsService:
    layout = Layout(tmp_path)
    layout.make_dirs()
    return MetricsService(
        layout=layout,
        config=agent_config(telemetry_batch_seconds=1, metrics_socket=""),
        tags=lambda: KWS_TAGS,
        out=out,
        clock=lambda: datetime.now(UTC),
        monotonic=clock,
        **kwargs,
    )


def report(svc: MetricsService, clock: Clock, value: float) -> None:
    datagram = json.dumps({"model": "kws", "metrics": {"latency_ms": value}}).encode()
    assert svc.ingest(datagram)
    clock.now += 1  # the batch is due
    svc.step(0)


def test_a_batch_is_sent_again_identically_until_the_server_confirms_it(tmp_path: Path) -> None:
    out, clock = ListOut(), Clock()
    out.confirms = False  # the bridge is not subscribed: nothing comes back
    svc = service(tmp_path, out, clock)
    report(svc, clock, 1.0)
    (first,) = out.payloads
    batch_id = parse_telemetry(first).batch_id
    assert batch_id is not None
    assert len(batch_id) == 32

    # not before its time, then the same bytes, with growing delays
    clock.now += 4.9
    svc.step(0)
    assert len(out.payloads) == 1
    clock.now += 0.1
    svc.step(0)
    assert out.payloads == [first, first]
    clock.now += 9.9
    svc.step(0)
    assert len(out.payloads) == 2
    clock.now += 0.1
    svc.step(0)
    assert out.payloads == [first] * 3

    # when the server confirms it (on paho's thread), it is never sent again
    svc.on_acks(EventsAck(batch_ids=(batch_id,)).to_json())
    svc.step(0)
    clock.now += 3600
    svc.step(0)
    assert out.payloads == [first] * 3
    stats = svc.stats()
    assert (stats["unconfirmed_payloads"], stats["resent_payloads"]) == (0, 2)
    assert (stats["confirmed_payloads"], stats["sent_payloads"]) == (1, 1)


def test_acks_that_name_other_things_or_are_malformed_change_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, clock = ListOut(), Clock()
    out.confirms = False
    svc = service(tmp_path, out, clock)
    report(svc, clock, 1.0)
    batch_id = parse_telemetry(out.payloads[0]).batch_id
    assert batch_id is not None
    with caplog.at_level(logging.DEBUG, logger="device_agent.metrics_server"):
        for data in (
            EventsAck(event_ids=(batch_id,)).to_json(),  # an event's id, not a batch's
            EventsAck(batch_ids=("f" * 32,)).to_json(),
            b'{"v":1,"batch_ids":["' + batch_id.upper().encode() + b'"]}',
            b'{"v":1,"batch_ids":[' + b"[" * 5000 + b"]" * 5000 + b"]}",
            b"\xff" * 70_000,
        ):
            svc.on_acks(data)
    svc.step(0)
    assert len(svc.unconfirmed) == 1
    assert caplog.text.count("ignored a malformed acks message") == 3


def test_nothing_goes_again_while_the_link_is_down_and_soon_after_it_is_back(
    tmp_path: Path,
) -> None:
    out, clock = ListOut(), Clock()
    out.confirms = False
    svc = service(tmp_path, out, clock)
    report(svc, clock, 1.0)
    for _ in range(3):  # due again at +5, +15, +35: now waiting until +75
        due = svc.unconfirmed.next_due()
        assert due is not None
        clock.now = due
        svc.step(0)
    assert len(out.payloads) == 4

    # when the link drops for a while
    out.up = False
    clock.now += 30
    svc.step(0)
    assert len(out.payloads) == 4

    # then after the reconnection it goes again after the first delay, not the long one
    out.up = True
    svc.on_connected()
    svc.step(0)
    assert len(out.payloads) == 4
    clock.now += 5
    svc.step(0)
    assert len(out.payloads) == 5


def test_a_confirmation_beating_the_bookkeeping_is_not_lost(tmp_path: Path) -> None:
    # ListOut confirms inside send(), before the service has noted the payload as held
    out, clock = ListOut(), Clock()
    svc = service(tmp_path, out, clock)
    out.on_acks = svc.on_acks
    report(svc, clock, 1.0)
    svc.step(0)
    assert len(svc.unconfirmed) == 0
    clock.now += 3600
    svc.step(0)
    assert len(out.payloads) == 1


def test_the_held_batches_are_bounded_and_the_drops_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, clock = ListOut(), Clock()
    out.confirms = False
    svc = service(tmp_path, out, clock, unconfirmed=Unconfirmed(max_payloads=2, max_bytes=1 << 20))
    with caplog.at_level(logging.WARNING):
        for value in range(4):
            report(svc, clock, float(value))
    assert len(svc.unconfirmed) == 2
    kept = [s.metrics["latency_ms"] for p in svc.unconfirmed.due(1e9) for s in _samples(p.data)]
    assert kept == [2.0, 3.0]
    assert cast(dict[str, int], svc.stats()["dropped"])["unconfirmed_full"] == 2
    assert caplog.text.count("unconfirmed; dropped the oldest") == 2


def test_without_confirmation_a_batch_has_no_id_and_is_not_held(tmp_path: Path) -> None:
    out, clock = ListOut(), Clock()
    svc = service(tmp_path, out, clock, confirm=False)
    report(svc, clock, 1.0)
    assert parse_telemetry(out.payloads[0]).batch_id is None
    assert len(svc.unconfirmed) == 0


def test_each_batch_gets_its_own_id(tmp_path: Path) -> None:
    out, clock = ListOut(), Clock()
    svc = service(tmp_path, out, clock)
    out.on_acks = svc.on_acks
    for value in range(5):
        report(svc, clock, float(value))
    ids = {parse_telemetry(p).batch_id for p in out.payloads}
    assert len(ids) == 5
    assert None not in ids


def _samples(data: bytes) -> tuple[TelemetrySample, ...]:
    return parse_telemetry(data).samples
