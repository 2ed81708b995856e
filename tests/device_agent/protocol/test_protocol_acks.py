"""`event_id` on events (optional: older agents send none) and the `acks` message."""

import json

import pytest

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    MAX_ACK_IDS,
    EventsAck,
    parse_acks,
    parse_event,
)
from device_agent.protocol.topics import CHANNEL_QOS, Channel, parse_topic, topic_for

ID = "0123456789abcdef0123456789abcdef"
EVENT = {
    "v": 1,
    "seq": 3,
    "rollout_id": None,
    "model": "kws",
    "phase": "accepted",
    "progress": None,
    "code": None,
    "detail": "",
    "ts": "2026-11-22T10:00:00Z",
}


def test_an_event_without_an_id_still_parses_and_encodes_as_before() -> None:
    event = parse_event(json.dumps(EVENT).encode())
    assert event.event_id is None
    assert json.loads(event.to_json()) == EVENT


def test_an_event_id_round_trips() -> None:
    event = parse_event(json.dumps({**EVENT, "event_id": ID}).encode())
    assert event.event_id == ID
    assert parse_event(event.to_json()) == event


@pytest.mark.parametrize(
    "event_id",
    [ID.upper(), ID[:-1], ID + "0", ID + "\n", 12, "", "../" + ID[3:], "é" * 32],
)
def test_a_bad_event_id_is_refused(event_id: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_event(json.dumps({**EVENT, "event_id": event_id}).encode())
    assert caught.value.code is ErrorCode.MALFORMED


def test_acks_round_trip_and_are_bounded() -> None:
    ack = EventsAck(event_ids=(ID,) * MAX_ACK_IDS)
    assert parse_acks(ack.to_json()) == ack
    with pytest.raises(ProtocolError):
        EventsAck(event_ids=(ID,) * (MAX_ACK_IDS + 1))
    with pytest.raises(ProtocolError):
        parse_acks(b'{"v":1,"event_ids":[]}')
    with pytest.raises(ProtocolError):
        parse_acks(b'{"v":1,"event_ids":[null]}')


def test_the_acks_topic_is_a_device_topic_at_qos_0() -> None:
    assert parse_topic(topic_for("dev-1", Channel.ACKS)) == ("dev-1", Channel.ACKS)
    assert CHANNEL_QOS[Channel.ACKS] == 0
