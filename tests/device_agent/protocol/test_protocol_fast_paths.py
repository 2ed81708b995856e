"""The hand-written fast paths give exactly what the generic code gives.

The bridge parses every telemetry message and the director encodes and signs one
envelope per device, so `TelemetryBatch.from_dict`, `DesiredState.to_json` and
`sign_envelope` have fast paths. Each is checked here against the generic path it
shortcuts, on generated input (valid, nearly valid and hostile), so a check the fast
path forgets shows up as a difference.
"""

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent.protocol import messages
from device_agent.protocol.envelope import (
    DESIRED_PAYLOAD_TYPE,
    generate_director_key,
    key_id,
    sign_envelope,
    verify_envelope,
)
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    DesiredState,
    ModelTarget,
    TelemetryBatch,
    dumps_json,
    format_timestamp,
    loads_json,
    parse_timestamp,
)

# A valid sample, then at most one field replaced by a value near or past its check's edge:
# random junk is refused in its first field and never reaches the later checks.
_VALID_SAMPLE: dict[str, Any] = {
    "model": "kws",
    "version": "1.4.0",
    "rollout_id": "r-9",
    "arm": "B",
    "metrics": {"latency_ms": 12.5},
    "ts": "2026-11-22T10:01:00Z",
}
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
_EDGES: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["k", "a" * 64, "a" * 65, "KWS", "k ws", "kws/1", "", "é", 7]),
    "version": st.sampled_from(
        ["1.0.0", "1.4.0-rc.1", "1.0", "v1.0.0", "1.0.0-" + "a" * 58, "1.0.0-" + "a" * 200, ""]
    ),
    "rollout_id": st.one_of(st.none(), st.sampled_from(["r-9", "", "a b", "x" * 200, 3])),
    "arm": st.one_of(st.none(), st.sampled_from(["A", "", "a b", "x" * 200, False])),
    "metrics": st.dictionaries(
        st.sampled_from(["latency_ms", "x", "p95.ms", "latency ms", "", "é", "a" * 200]),
        _numbers,
        max_size=3,
    ),
    "ts": st.one_of(
        st.sampled_from(
            [
                "2026-11-22T10:01:00.5Z",
                "2026-11-22T10:01:00+01:00",
                "2026-02-30T10:01:00Z",
                "yesterday",
                "",
            ]
        ),
        st.integers(),
    ),
}


@st.composite
def _sample(draw: st.DrawFn) -> Any:
    sample = dict(_VALID_SAMPLE)
    how = draw(st.sampled_from(["valid", "field", "field", "missing", "extra", "not-a-dict"]))
    if how == "field":
        name = draw(st.sampled_from(sorted(_EDGES)))
        sample[name] = draw(_EDGES[name])
    elif how == "missing":
        del sample[draw(st.sampled_from(sorted(sample)))]
    elif how == "extra":
        sample["extra"] = 1
    elif how == "not-a-dict":
        return draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=1)))
    return sample


_batches = st.one_of(
    st.fixed_dictionaries({"v": st.just(1), "samples": st.lists(_sample(), max_size=3)}),
    st.fixed_dictionaries({"v": st.just(1), "samples": st.lists(_sample(), max_size=3)}),
    st.fixed_dictionaries(
        {"v": st.sampled_from([0, 2, True, 1.0, "1"]), "samples": st.lists(_sample(), max_size=2)}
    ),
    st.fixed_dictionaries({"v": st.just(1)}),
)


def _generic(obj: object) -> TelemetryBatch | ProtocolError:
    with mock.patch.object(messages, "_telemetry_fast", return_value=None):
        try:
            return TelemetryBatch.from_dict(obj)
        except ProtocolError as exc:
            return exc


def _check_fast_equals_generic(obj: object) -> None:
    # Twice: the second time through the fast path's caches of values seen valid.
    for _ in range(2):
        fast = messages._telemetry_fast(obj)
        generic = _generic(obj)
        if fast is None:
            continue  # the generic path decides, with its own error
        assert not isinstance(generic, ProtocolError), f"fast path accepted {obj!r}: {generic}"
        assert fast == generic
        assert all(type(v) is float for s in fast.samples for v in s.metrics.values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=_batches)
def test_fast_telemetry_parse_equals_the_generic_one(obj: dict[str, Any]) -> None:
    _check_fast_equals_generic(obj)


@pytest.mark.parametrize("field", sorted(_EDGES))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fast_telemetry_parse_checks_each_field(field: str, data: st.DataObject) -> None:
    sample = dict(_VALID_SAMPLE, **{field: data.draw(_EDGES[field])})
    _check_fast_equals_generic({"v": 1, "samples": [_VALID_SAMPLE, sample]})


def test_fast_telemetry_parse_takes_the_usual_shape() -> None:
    obj = {
        "v": 1,
        "samples": [
            {
                "model": "kws",
                "version": "1.4.0",
                "rollout_id": "r-9",
                "arm": "B",
                "metrics": {"latency_ms": 12, "score": 0.5},
                "ts": "2026-11-22T10:01:00Z",
            }
        ],
    }
    fast = messages._telemetry_fast(obj)
    assert fast is not None  # the shape every agent sends is not left to the slow path
    assert fast == _generic(obj)
    assert messages.parse_telemetry(json.dumps(obj).encode()) == fast


def test_fast_telemetry_caches_stay_bounded() -> None:
    for i in range(messages._FAST_CACHE_MAX + 10):
        messages._remember(messages._valid_metric_names, f"m{i}")
    assert len(messages._valid_metric_names) <= messages._FAST_CACHE_MAX


# --- desired state encoding -------------------------------------------------------------

_SHA = "3f" * 32


def _target(name: str, version: str, hardware: str) -> ModelTarget:
    return ModelTarget(
        name=name,
        path=f"models/{name}/{version}/{hardware}/model.onnx",
        version=version,
        release_counter=3,
        hardware=hardware,
        sha256=_SHA,
        length=1234,
        url=f"https://cdn.example.com/models/{name}/{version}/{hardware}/model.onnx",
        rollout_id="r-9",
        arm="B",
    )


@settings(max_examples=200, deadline=None)
@given(
    device_id=st.sampled_from(["dev-0042", "d", "dev_a-1Z", "x" * 64]),
    seq=st.integers(min_value=1, max_value=2**53 - 1),
    issued=st.datetimes(
        min_value=datetime(1, 1, 1),  # noqa: DTZ001 (naive bounds: hypothesis wants them so)
        max_value=datetime(9000, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    models=st.lists(
        st.tuples(st.sampled_from(["kws", "det"]), st.sampled_from(["1.0.0", "2.0.0-rc.1"])),
        max_size=2,
        unique_by=lambda t: t[0],
    ),
)
def test_desired_to_json_equals_dumps_of_to_dict(
    device_id: str, seq: int, issued: datetime, models: list[tuple[str, str]]
) -> None:
    payload = DesiredState(
        device_id=device_id,
        seq=seq,
        issued_at=issued,
        expires_at=issued + timedelta(days=7) if issued.year < 9000 else issued,
        models=tuple(_target(n, v, "linux-x86_64-fp32") for n, v in models),
    )
    assert payload.to_json() == dumps_json(payload.to_dict())
    assert messages.parse_desired(payload.to_json()) == payload


def test_format_timestamp_pads_early_years_and_round_trips() -> None:
    early = datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert format_timestamp(early) == "0999-01-02T03:04:05.000006Z"
    assert parse_timestamp(format_timestamp(early)) == early
    assert format_timestamp(datetime(2026, 11, 22, 10, tzinfo=UTC)) == "2026-11-22T10:00:00Z"


def test_loads_json_refuses_a_byte_order_mark() -> None:
    with pytest.raises(ProtocolError) as caught:
        loads_json(b'\xef\xbb\xbf{"v": 1}')
    assert caught.value.code == ErrorCode.MALFORMED


# --- envelope ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload_type", [DESIRED_PAYLOAD_TYPE, 'a"b\\c', "tÿpe\n"])
def test_sign_envelope_equals_the_generic_encoding(payload_type: str) -> None:
    key = generate_director_key()
    payload = b'{"v":1,"x":"\xc3\xbc"}'
    envelope = sign_envelope(payload, key, payload_type=payload_type)
    document = json.loads(envelope)
    expected = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [
            {"keyid": key_id(key.public_key()), "sig": document["signatures"][0]["sig"]}
        ],
    }
    assert envelope == dumps_json(expected, max_bytes=len(envelope))
    assert verify_envelope(envelope, key.public_key(), payload_type=payload_type) == payload


def test_sign_envelope_key_ids_follow_the_key() -> None:
    first, second = generate_director_key(), generate_director_key()
    for key in (first, second, first):
        document = json.loads(sign_envelope(b"{}", key))
        assert document["signatures"][0]["keyid"] == key_id(key.public_key())


def test_sign_envelope_refuses_an_oversized_envelope() -> None:
    with pytest.raises(ProtocolError) as caught:
        sign_envelope(b"x" * 60_000, generate_director_key())
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE
