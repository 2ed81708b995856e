"""DSSE envelopes: every way to get an unauthorised payload past verify is refused."""

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from device_agent.protocol.envelope import (
    MAX_ENVELOPE_BYTES,
    generate_director_key,
    sign_envelope,
    verify_envelope,
)
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError

Envelope = dict[str, Any]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _sig(envelope: Envelope) -> bytes:
    return base64.b64decode(envelope["signatures"][0]["sig"])


def _raw_rs(envelope: Envelope) -> None:
    r, s = decode_dss_signature(_sig(envelope))
    envelope["signatures"][0]["sig"] = _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def _ber_long_length(envelope: Envelope) -> None:
    # same SEQUENCE, length in non-minimal long form (0x81 xx): valid BER, not DER
    der = _sig(envelope)
    envelope["signatures"][0]["sig"] = _b64(der[:1] + b"\x81" + der[1:])


def _trailing_byte(envelope: Envelope) -> None:
    envelope["signatures"][0]["sig"] = _b64(_sig(envelope) + b"\x00")


def _payload(envelope: Envelope) -> None:
    envelope["payload"] = _b64(b'{"v":1,"seq":999}')


def _other_signer_with_forged_keyid(envelope: Envelope) -> None:
    forged = json.loads(sign_envelope(base64.b64decode(envelope["payload"]), _OTHER))
    forged["signatures"][0]["keyid"] = envelope["signatures"][0]["keyid"]
    envelope["signatures"] = forged["signatures"]


def _other_signer(envelope: Envelope) -> None:
    envelope["signatures"] = json.loads(sign_envelope(b"x", _OTHER))["signatures"]


_OTHER = generate_director_key()
S = ErrorCode.SIGNATURE_INVALID
M = ErrorCode.MALFORMED

CASES: list[Any] = [
    pytest.param(lambda e: e.update(signatures=[]), S, id="empty-signatures"),
    pytest.param(lambda e: e.pop("signatures"), M, id="absent-signatures"),
    pytest.param(lambda e: e.update(signatures=None), M, id="null-signatures"),
    pytest.param(lambda e: e.update(signatures={"keyid": "x", "sig": "y"}), M, id="sig-object"),
    pytest.param(lambda e: e["signatures"][0].update(sig=""), S, id="empty-sig"),
    pytest.param(lambda e: e["signatures"][0].pop("sig"), M, id="absent-sig"),
    pytest.param(lambda e: e["signatures"][0].update(sig=None), M, id="null-sig"),
    pytest.param(
        lambda e: e.update(
            alg="none",
            signatures=[{"keyid": e["signatures"][0]["keyid"], "sig": "", "alg": "none"}],
        ),
        S,
        id="alg-none",
    ),
    pytest.param(lambda e: e["signatures"][0].pop("keyid"), S, id="absent-keyid"),
    pytest.param(lambda e: e["signatures"][0].update(keyid="0" * 64), S, id="keyid-mismatch"),
    pytest.param(lambda e: e["signatures"][0].update(keyid=7), M, id="keyid-not-string"),
    pytest.param(_other_signer, S, id="signed-by-other-key"),
    pytest.param(_other_signer_with_forged_keyid, S, id="other-key-forged-keyid"),
    pytest.param(_raw_rs, S, id="raw-r-s-64-bytes"),
    pytest.param(_ber_long_length, S, id="ber-not-der"),
    pytest.param(_trailing_byte, S, id="der-plus-trailing-byte"),
    pytest.param(_payload, S, id="payload-swapped"),
    pytest.param(lambda e: e.update(payloadType="application/json"), S, id="payload-type"),
    pytest.param(lambda e: e.pop("payloadType"), M, id="absent-payload-type"),
    pytest.param(lambda e: e.update(payload="not base64!"), M, id="payload-bad-base64"),
    pytest.param(lambda e: e.update(payload=e["payload"].rstrip("=")), M, id="payload-no-pad"),
    pytest.param(lambda e: e.update(payload=12), M, id="payload-not-string"),
    pytest.param(lambda e: e["signatures"][0].update(sig="@@@@"), M, id="sig-bad-base64"),
    pytest.param(lambda e: e.update(signatures=e["signatures"] * 5), S, id="too-many-sigs"),
    pytest.param(lambda e: e.update(signatures=["sig"]), M, id="signature-not-object"),
]


@pytest.mark.parametrize(("tamper", "code"), CASES)
def test_tampered_envelope_refused(
    director_key: ec.EllipticCurvePrivateKey,
    tamper: Callable[[Envelope], object],
    code: ErrorCode,
) -> None:
    # given a good envelope, tampered with
    envelope = json.loads(sign_envelope(b'{"v":1,"seq":10}', director_key))  # base64 ends "=="

    tamper(envelope)

    # when / then
    with pytest.raises(ProtocolError) as caught:
        verify_envelope(json.dumps(envelope).encode(), director_key.public_key())
    assert caught.value.code == code


def test_signature_over_other_payload_type_refused(
    director_key: ec.EllipticCurvePrivateKey,
) -> None:
    # a genuine signature, but for another payload type (type confusion)
    envelope = sign_envelope(b"{}", director_key, payload_type="application/vnd.fleet.other+json")

    with pytest.raises(ProtocolError) as caught:
        verify_envelope(envelope, director_key.public_key())
    assert caught.value.code == ErrorCode.SIGNATURE_INVALID


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 2048).public_key(), id="rsa"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()).public_key(), id="p384"),
        pytest.param(lambda: ed25519.Ed25519PrivateKey.generate().public_key(), id="ed25519"),
    ],
)
@pytest.mark.parametrize("as_pem", [False, True])
def test_pinned_key_must_be_p256(
    director_key: ec.EllipticCurvePrivateKey, make_key: Callable[[], Any], as_pem: bool
) -> None:
    key = make_key()
    pinned = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo) if as_pem else key

    with pytest.raises(ProtocolError) as caught:
        verify_envelope(sign_envelope(b"{}", director_key), pinned)
    assert caught.value.code == ErrorCode.SIGNATURE_INVALID


@pytest.mark.parametrize("pinned", [b"", "not a pem", b"-----BEGIN PUBLIC KEY-----\nAA==\n"])
def test_unreadable_pinned_key_refused(
    director_key: ec.EllipticCurvePrivateKey, pinned: bytes | str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        verify_envelope(sign_envelope(b"{}", director_key), pinned)
    assert caught.value.code == ErrorCode.MALFORMED


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[]", b'"string"', b"\xff\xfe", b'{"payload": NaN}']
)
def test_not_a_json_object_refused(director_key: ec.EllipticCurvePrivateKey, data: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        verify_envelope(data, director_key.public_key())
    assert caught.value.code == ErrorCode.MALFORMED


def test_oversized_envelope_refused_before_parsing(
    director_key: ec.EllipticCurvePrivateKey,
) -> None:
    envelope = json.loads(sign_envelope(b"{}", director_key))
    envelope["padding"] = "x" * MAX_ENVELOPE_BYTES

    with pytest.raises(ProtocolError) as caught:
        verify_envelope(json.dumps(envelope).encode(), director_key.public_key())
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE


def test_signing_refuses_what_verify_would_refuse(
    director_key: ec.EllipticCurvePrivateKey,
) -> None:
    with pytest.raises(ProtocolError) as caught:
        sign_envelope(b"x" * MAX_ENVELOPE_BYTES, director_key)
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE


def test_signing_refuses_non_p256_key() -> None:
    with pytest.raises(ProtocolError):
        sign_envelope(b"{}", ec.generate_private_key(ec.SECP384R1()))
