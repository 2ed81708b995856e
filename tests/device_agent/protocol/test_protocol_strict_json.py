"""Strict JSON: what json.loads tolerates but a C parser or a signed payload must not."""

import json
from collections.abc import Callable

import pytest

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    Phase,
    TelemetryBatch,
    TelemetrySample,
    parse_desired,
    parse_event,
    parse_state,
    parse_status,
    parse_telemetry,
    parse_timestamp,
)

PARSERS: list[Callable[[bytes], object]] = [
    parse_desired,
    parse_state,
    parse_event,
    parse_telemetry,
    parse_status,
]
EVENT = (
    b'{"v":1,"seq":%b,"rollout_id":null,"model":"kws","phase":"trial","progress":null,'
    b'"code":null,"detail":"%b","ts":"2026-11-22T10:00:00Z"}'
)


def _event(seq: bytes = b"1", detail: bytes = b"") -> bytes:
    return EVENT % (seq, detail)


def _refused(parse: Callable[[bytes], object], data: bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as caught:
        parse(data)
    return caught.value.code


def test_the_template_is_valid() -> None:
    assert parse_event(_event()).phase == Phase.TRIAL


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
def test_non_finite_numbers_refused(literal: bytes) -> None:
    assert _refused(parse_event, _event(seq=literal)) == ErrorCode.MALFORMED


def test_duplicate_keys_refused() -> None:
    # json.loads would silently keep the second "seq"; cJSON would keep the first
    data = _event().replace(b'"seq":1,', b'"seq":1,"seq":2,')

    assert _refused(parse_event, data) == ErrorCode.MALFORMED


@pytest.mark.parametrize("parse", PARSERS)
def test_deep_nesting_refused(parse: Callable[[bytes], object]) -> None:
    depth = (MAX_PAYLOAD_BYTES - 20) // 2
    data = b'{"v":1,"x":' + b"[" * depth + b"]" * depth + b"}"

    assert _refused(parse, data) == ErrorCode.MALFORMED


@pytest.mark.parametrize("parse", PARSERS)
def test_size_limit_is_64_kib(parse: Callable[[bytes], object]) -> None:
    status = b'{"v":1,"status":"online"}'
    at_limit = status + b" " * (MAX_PAYLOAD_BYTES - len(status))

    assert parse_status(at_limit).status == "online"
    assert _refused(parse, at_limit + b" ") == ErrorCode.PAYLOAD_TOO_LARGE


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_event(detail=b"\xff"), id="invalid-utf8"),
        pytest.param(_event(detail=b"\xed\xa0\x80"), id="utf8-encoded-surrogate"),
        pytest.param(_event(detail=b"\\ud800"), id="escaped-lone-surrogate"),
        pytest.param(_event(detail=b"\\u0000"), id="escaped-nul"),
        pytest.param(b"\xef\xbb\xbf" + _event(), id="bom"),
        pytest.param(_event().decode().encode("utf-16"), id="utf16"),
        pytest.param(b"[" + _event() + b"]", id="array"),
        pytest.param(b"1", id="number"),
        pytest.param(b"", id="empty"),
        pytest.param(_event() + b"{}", id="trailing-data"),
    ],
)
def test_bad_encoding_refused(data: bytes) -> None:
    assert _refused(parse_event, data) == ErrorCode.MALFORMED


def test_non_ascii_text_is_utf8_on_the_wire() -> None:
    data = _event(detail="température ✓".encode())

    event = parse_event(data)

    assert event.detail == "température ✓"
    assert "température ✓".encode() in event.to_json()


def test_pretty_printed_json_is_accepted() -> None:
    pretty = json.dumps(json.loads(_event()), indent=2).encode()

    assert parse_event(pretty) == parse_event(_event())


def test_encoder_refuses_oversize() -> None:
    # given a batch that is valid field by field but far beyond 64 KiB once encoded
    sample = TelemetrySample(
        model="kws",
        version="1.0.0",
        rollout_id=None,
        arm=None,
        metrics={f"metric_{'x' * 50}_{i}": 1.0 for i in range(32)},
        ts=parse_timestamp("2026-11-22T10:00:00Z"),
    )
    batch = TelemetryBatch(samples=(sample,) * 100)

    with pytest.raises(ProtocolError) as caught:
        batch.to_json()
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE


def test_constructors_validate_too() -> None:
    # a message built in code is checked like a received one
    with pytest.raises(ProtocolError):
        TelemetryBatch(samples=())
