"""Fuzzing verify: arbitrary input only ever raises ProtocolError, and no single-byte
change to a genuine envelope is accepted."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.protocol.envelope import sign_envelope, verify_envelope
from device_agent.protocol.exceptions import ProtocolError

FUZZ = settings(max_examples=200, deadline=None, database=None)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
signature_entries = st.fixed_dictionaries(
    {}, optional={"keyid": json_values, "sig": json_values | st.binary().map(bytes.hex)}
)
envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "payload": json_values,
        "payloadType": json_values | st.just("application/vnd.fleet.desired+json"),
        "signatures": json_values | st.lists(signature_entries | json_values, max_size=5),
    },
)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(director_key: ec.EllipticCurvePrivateKey, data: bytes) -> None:
    with pytest.raises(ProtocolError):
        verify_envelope(data, director_key.public_key())


@FUZZ
@given(envelope=envelope_like)
def test_arbitrary_envelope_like_json(
    director_key: ec.EllipticCurvePrivateKey, envelope: dict[str, object]
) -> None:
    data = json.dumps(envelope).encode()
    try:
        verify_envelope(data, director_key.public_key())
    except ProtocolError:
        return
    raise AssertionError("an unsigned envelope verified")


@FUZZ
@given(payload=st.binary(max_size=256), position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_any_single_byte_change_is_refused(
    director_key: ec.EllipticCurvePrivateKey, payload: bytes, position: int, flip: int
) -> None:
    # given a genuine envelope
    envelope = bytearray(sign_envelope(payload, director_key))
    assert verify_envelope(bytes(envelope), director_key.public_key()) == payload

    # when one byte changes
    envelope[position % len(envelope)] ^= flip

    # then it no longer verifies
    try:
        verify_envelope(bytes(envelope), director_key.public_key())
    except ProtocolError:
        return
    raise AssertionError(f"tampered envelope verified: {bytes(envelope)!r}")
