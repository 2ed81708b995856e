"""`batch_id` on telemetry (optional: older agents send none) and `batch_ids` in `acks`."""

import json
from unittest import mock

import pytest

from device_agent.protocol import messages
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    MAX_ACK_IDS,
    EventsAck,
    TelemetryBatch,
    parse_acks,
    parse_telemetry,
)

ID = "0123456789abcdef0123456789abcdef"
OTHER = "f" * 32
SAMPLE = {
    "model": "kws",
    "version": "1.0.0",
    "rollout_id": None,
    "arm": None,
    "metrics": {"latency_ms": 3.0},
    "ts": "2026-11-22T10:01:00Z",
}
BATCH = {"v": 1, "samples": [SAMPLE]}


def generic(data: bytes) -> TelemetryBatch:
    """parse_telemetry without its fast path."""
    with mock.patch.object(messages, "_telemetry_fast", return_value=None):
        return parse_telemetry(data)


def test_a_batch_without_an_id_parses_and_encodes_as_before() -> None:
    batch = parse_telemetry(json.dumps(BATCH).encode())
    assert batch.batch_id is None
    assert json.loads(batch.to_json()) == BATCH


def test_a_batch_id_round_trips_through_both_parsers() -> None:
    data = json.dumps({**BATCH, "batch_id": ID}).encode()
    batch = parse_telemetry(data)
    assert batch.batch_id == ID
    assert parse_telemetry(batch.to_json()) == batch
    assert messages._telemetry_fast(json.loads(data)) == batch
    assert generic(data) == batch


@pytest.mark.parametrize(
    "batch_id",
    [ID.upper(), ID[:-1], ID + "0", ID + "\n", 12, "", ["x"], "é" * 32, "0x" + ID[2:]],
)
def test_a_bad_batch_id_is_refused(batch_id: object) -> None:
    data = json.dumps({**BATCH, "batch_id": batch_id}).encode()
    for parse in (parse_telemetry, generic):
        with pytest.raises(ProtocolError) as caught:
            parse(data)
        assert caught.value.code is ErrorCode.MALFORMED


def test_a_null_batch_id_is_no_id_as_for_events() -> None:
    data = json.dumps({**BATCH, "batch_id": None}).encode()
    assert parse_telemetry(data).batch_id is None
    assert json.loads(parse_telemetry(data).to_json()) == BATCH


def test_a_batch_id_is_refused_in_code_too() -> None:
    with pytest.raises(ProtocolError):
        TelemetryBatch(samples=(parse_telemetry(json.dumps(BATCH).encode()).samples), batch_id="x")


def test_a_duplicate_batch_id_key_is_refused() -> None:
    data = json.dumps(BATCH)[:-1].encode() + f',"batch_id":"{ID}","batch_id":"{OTHER}"}}'.encode()
    with pytest.raises(ProtocolError):
        parse_telemetry(data)


def test_acks_of_batches_round_trip_and_leave_out_the_empty_list() -> None:
    both = EventsAck(event_ids=(ID,), batch_ids=(OTHER,))
    assert json.loads(both.to_json()) == {"v": 1, "event_ids": [ID], "batch_ids": [OTHER]}
    assert parse_acks(both.to_json()) == both
    batches = EventsAck(batch_ids=(ID,) * MAX_ACK_IDS)
    assert set(json.loads(batches.to_json())) == {"v", "batch_ids"}
    assert parse_acks(batches.to_json()) == batches
    # events only: exactly what agents that know nothing of batch_ids parse
    events = EventsAck(event_ids=(ID,))
    assert events.to_json() == b'{"v":1,"event_ids":["' + ID.encode() + b'"]}'


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":1}',
        b'{"v":1,"batch_ids":[]}',
        b'{"v":1,"event_ids":[],"batch_ids":["' + ID.encode() + b'"]}',
        b'{"v":1,"batch_ids":null}',
        b'{"v":1,"batch_ids":"' + ID.encode() + b'"}',
        b'{"v":1,"batch_ids":[null]}',
        b'{"v":1,"batch_ids":["' + ID.upper().encode() + b'"]}',
        b'{"v":1,"batch_ids":["' + ID.encode() + b'\\n"]}',
        b'{"v":1,"batch_ids":[["' + ID.encode() + b'"]]}',
        b'{"v":1,"batch_ids":["' + ID.encode() + b'"],"samples":[]}',
        b'{"v":2,"batch_ids":["' + ID.encode() + b'"]}',
        b'{"v":1,"batch_ids":["' + ID.encode() + b'"],"batch_ids":["' + OTHER.encode() + b'"]}',
        b"[]",
        b"",
    ],
)
def test_malformed_acks_are_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_acks(payload)
    assert caught.value.code is ErrorCode.MALFORMED


def test_oversized_acks_are_refused() -> None:
    too_many = json.dumps({"v": 1, "batch_ids": [ID] * (MAX_ACK_IDS + 1)}).encode()
    with pytest.raises(ProtocolError) as caught:
        parse_acks(too_many)
    assert caught.value.code is ErrorCode.MALFORMED
    with pytest.raises(ProtocolError):
        EventsAck(batch_ids=(ID,) * (MAX_ACK_IDS + 1))
    huge = b'{"v":1,"batch_ids":["' + b"a" * 70000 + b'"]}'
    with pytest.raises(ProtocolError) as caught:
        parse_acks(huge)
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE


def test_hostile_nesting_in_acks_is_refused_not_crashed() -> None:
    deep = b'{"v":1,"batch_ids":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ProtocolError):
        parse_acks(deep)
