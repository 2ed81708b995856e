"""DSSE envelopes: what we sign verifies, byte for byte as the DSSE spec says."""

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from device_agent.protocol.envelope import (
    DESIRED_PAYLOAD_TYPE,
    generate_director_key,
    key_id,
    pae,
    public_key_to_pem,
    sign_desired,
    sign_envelope,
    verify_desired,
    verify_envelope,
)
from device_agent.protocol.messages import parse_desired


def test_pae_matches_dsse_test_vector() -> None:
    # protocol.md of secure-systems-lab/dsse
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t/é", b"\x00\xff") == b"DSSEv1 4 t/\xc3\xa9 2 \x00\xff"


def test_keyid_is_sha256_of_spki_der(director_key: ec.EllipticCurvePrivateKey) -> None:
    # given the DER taken straight out of the PEM armour (not via our serializer)
    pem = public_key_to_pem(director_key.public_key()).decode()
    der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))

    assert key_id(director_key.public_key()) == hashlib.sha256(der).hexdigest()


def test_envelope_shape_and_der_signature(director_key: ec.EllipticCurvePrivateKey) -> None:
    # when
    envelope = json.loads(sign_envelope(b'{"v":1}', director_key))

    # then the signature is DER ECDSA-SHA256 over PAE, checked with cryptography directly
    assert envelope["payloadType"] == DESIRED_PAYLOAD_TYPE
    assert base64.b64decode(envelope["payload"]) == b'{"v":1}'
    [entry] = envelope["signatures"]
    assert entry["keyid"] == key_id(director_key.public_key())
    signature = base64.b64decode(entry["sig"])
    decode_dss_signature(signature)  # raises unless DER
    director_key.public_key().verify(
        signature, pae(DESIRED_PAYLOAD_TYPE, b'{"v":1}'), ec.ECDSA(hashes.SHA256())
    )


def test_verify_accepts_key_object_pem_bytes_and_pem_str(
    director_key: ec.EllipticCurvePrivateKey,
) -> None:
    envelope = sign_envelope(b"payload", director_key)
    pem = public_key_to_pem(director_key.public_key())

    for pinned in (director_key.public_key(), pem, pem.decode()):
        assert verify_envelope(envelope, pinned) == b"payload"


def test_desired_round_trip(
    director_key: ec.EllipticCurvePrivateKey, desired_dict: dict[str, Any]
) -> None:
    desired = parse_desired(json.dumps(desired_dict).encode())

    assert verify_desired(sign_desired(desired, director_key), director_key.public_key()) == desired


def test_url_safe_base64_and_unknown_fields_are_accepted(
    director_key: ec.EllipticCurvePrivateKey,
) -> None:
    # DSSE: either base64 alphabet; consumers ignore unrecognised fields.
    payload = b"\xfb\xff\xfe" * 10  # encodes with '+' and '/' in the standard alphabet
    envelope = json.loads(sign_envelope(payload, director_key))
    envelope["payload"] = base64.urlsafe_b64encode(payload).decode()
    envelope["comment"] = "ignored"
    envelope["signatures"][0]["extra"] = 1

    assert verify_envelope(json.dumps(envelope).encode(), director_key.public_key()) == payload


def test_rotation_two_signatures_each_key_verifies(
    director_key: ec.EllipticCurvePrivateKey,
) -> None:
    # given an envelope signed by the old and the new director key
    new_key = generate_director_key()
    old = json.loads(sign_envelope(b"p", director_key))
    new = json.loads(sign_envelope(b"p", new_key))
    old["signatures"] += new["signatures"]
    both = json.dumps(old).encode()

    # then devices pinned to either key accept it
    assert verify_envelope(both, director_key.public_key()) == b"p"
    assert verify_envelope(both, new_key.public_key()) == b"p"
