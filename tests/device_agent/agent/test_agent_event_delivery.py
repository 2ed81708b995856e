"""The agent's unconfirmed events (device_agent/delivery.py): kept on disk with an id
before they are sent, sent again with backoff while connected until an `acks` message
names them, and kept across a restart; a repeated report is not a new event."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from device_agent.delivery import EventDelivery, EventOutbox
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    EventsAck,
    Phase,
    UpdateEvent,
    parse_event,
)

TS = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)


def _event(seq: int, phase: Phase = Phase.ACCEPTED, **changes: Any) -> UpdateEvent:
    fields: dict[str, Any] = {
        "seq": seq,
        "rollout_id": "r-1",
        "model": "kws",
        "phase": phase,
        "progress": None,
        "code": None,
        "detail": "",
        "ts": TS,
    }
    fields.update(changes)
    return UpdateEvent(**fields)


class Rig:
    """An EventDelivery on a fake clock that records what it sends."""

    def __init__(self, path: Path) -> None:
        self.now = 100.0
        self.online = True
        self.sent: list[UpdateEvent] = []
        self.delivery = EventDelivery(
            EventOutbox(path),
            send=lambda payload: self.sent.append(parse_event(payload)),
            connected=lambda: self.online,
            first_s=1.0,
            max_s=4.0,
            clock=lambda: self.now,
        )

    def ack(self, *events: UpdateEvent) -> None:
        ids = tuple(e.event_id for e in events if e.event_id)
        self.delivery.on_acks(EventsAck(event_ids=ids).to_json())


def test_an_event_is_on_disk_with_an_id_before_it_is_sent(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "events.json")
    rig.delivery.event(_event(1))

    [sent] = rig.sent
    assert sent.event_id is not None
    assert len(sent.event_id) == 32
    on_disk = json.loads((tmp_path / "events.json").read_bytes())["pending"]
    assert [parse_event(json.dumps(item).encode()) for item in on_disk] == [sent]


def test_an_unconfirmed_event_is_sent_again_with_backoff_until_acked(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "events.json")
    rig.delivery.event(_event(1))

    times = []
    for _ in range(40):  # 10 s of ticks of 0.25 s
        rig.now += 0.25
        before = len(rig.sent)
        rig.delivery.resend_due()
        if len(rig.sent) > before:
            times.append(rig.now - 100.0)
    # first after 1 s, then 2 s later, then every 4 s (the cap)
    assert times == [1.0, 3.0, 7.0]
    assert all(e == rig.sent[0] for e in rig.sent)  # the same event, id and all

    rig.ack(rig.sent[0])
    rig.now += 60
    rig.delivery.resend_due()
    assert len(rig.sent) == 4
    assert rig.delivery.unconfirmed() == 0
    assert json.loads((tmp_path / "events.json").read_bytes())["pending"] == []


def test_nothing_is_sent_again_while_offline_and_soon_after_reconnecting(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "events.json")
    rig.delivery.event(_event(1))
    rig.online = False
    rig.now += 30
    rig.delivery.resend_due()
    assert len(rig.sent) == 1

    rig.online = True
    rig.delivery.on_connected()
    rig.now += 1.0
    rig.delivery.resend_due()
    assert len(rig.sent) == 2


def test_unconfirmed_events_survive_a_restart_and_go_out_first(tmp_path: Path) -> None:
    first = Rig(tmp_path / "events.json")
    first.delivery.event(_event(1))
    first.delivery.event(_event(2))
    first.ack(first.sent[0])

    # when the agent restarts
    second = Rig(tmp_path / "events.json")
    second.delivery.resend_due()

    # then the unconfirmed one goes out again at once, as it was
    assert second.sent == [first.sent[1]]


def test_a_report_repeated_after_a_crash_is_not_a_new_event(tmp_path: Path) -> None:
    # given a job's outcome reported (then the agent crashed before journaling on)
    rig = Rig(tmp_path / "events.json")
    rig.delivery.event(_event(1, Phase.FAILED, code=ErrorCode.HASH_MISMATCH, detail="x"))

    # when recovery reports it again, later
    again = Rig(tmp_path / "events.json")
    again.delivery.event(
        _event(1, Phase.FAILED, code=ErrorCode.HASH_MISMATCH, detail="x", ts=datetime.now(UTC))
    )

    # then it is not a second event; another report is
    assert again.sent == []
    again.delivery.event(_event(1, Phase.DOWNLOADING, progress=0))
    assert again.delivery.unconfirmed() == 2


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b'{"v":1,"event_ids":[]}',
        b'{"v":1,"event_ids":["ABCDEF00000000000000000000000000"]}',
        b'{"v":1,"event_ids":["0123456789abcdef0123456789abcdef\\n"]}',
        b'{"v":1,"event_ids":"0123456789abcdef0123456789abcdef"}',
        b'{"v":1,"event_ids":["0123456789abcdef0123456789abcdef"],"more":1}',
        b'{"v":2,"event_ids":["0123456789abcdef0123456789abcdef"]}',
        b'{"v":1,"event_ids":[' + b'"0123456789abcdef0123456789abcdef",' * 501 + b'"x"]}',
        b" " * (MAX_PAYLOAD_BYTES + 1),
    ],
)
def test_a_malformed_ack_confirms_nothing(tmp_path: Path, payload: bytes) -> None:
    rig = Rig(tmp_path / "events.json")
    rig.delivery.event(_event(1))
    rig.delivery.on_acks(payload)
    assert rig.delivery.unconfirmed() == 1


def test_an_ack_of_unknown_ids_changes_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "events.json")
    rig.delivery.event(_event(1))
    rig.delivery.on_acks(EventsAck(event_ids=("0" * 32,)).to_json())
    assert rig.delivery.unconfirmed() == 1


def test_an_unreadable_events_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "events.json").write_text('{"v":1,"last":null,"pending":[{"seq":"x"}]}')
    rig = Rig(tmp_path / "events.json")
    assert rig.delivery.unconfirmed() == 0
    assert (tmp_path / "events.corrupt").exists()
    rig.delivery.event(_event(1))
    assert rig.delivery.unconfirmed() == 1


def test_the_unconfirmed_events_are_bounded_oldest_dropped(tmp_path: Path) -> None:
    outbox = EventOutbox(tmp_path / "events.json", max_pending=3)
    kept = [outbox.add(_event(seq)) for seq in range(1, 6)]
    assert [e.seq for e in outbox.pending.values()] == [3, 4, 5]
    assert all(e is not None for e in kept)
