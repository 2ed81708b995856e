"""DSSE envelopes signed with the director's ECDSA P-256 key (docs/protocol.md, `desired`).

Signature = ECDSA-P256-SHA256, DER encoded, over PAE(payloadType, payload) as in
https://github.com/secure-systems-lab/dsse/blob/master/protocol.md; keyid = hex
SHA-256 of the key's DER SubjectPublicKeyInfo. mbedTLS on the ESP32 verifies the
same bytes, which is why nothing but DER signatures by a P-256 key is accepted.
"""

import base64
import binascii
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError, brief
from device_agent.protocol.fsutil import write_atomic
from device_agent.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    DesiredState,
    loads_json,
    parse_desired,
)

DESIRED_PAYLOAD_TYPE = "application/vnd.fleet.desired+json"
MAX_ENVELOPE_BYTES = MAX_PAYLOAD_BYTES
# More than one signature only makes sense while the director key rotates.
MAX_SIGNATURES = 4
# DER SEQUENCE of two INTEGERs of at most 33 bytes each.
MAX_DER_SIGNATURE_BYTES = 72

PinnedKey: TypeAlias = PublicKeyTypes | bytes | str


# --- keys --------------------------------------------------------------------------


def _p256_public(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ProtocolError(ErrorCode.SIGNATURE_INVALID, "key is not an ECDSA P-256 public key")
    return key


def _p256_private(key: object) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ProtocolError(ErrorCode.SIGNATURE_INVALID, "key is not an ECDSA P-256 private key")
    return key


def generate_director_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key for the director."""
    return ec.generate_private_key(ec.SECP256R1())


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo: the DSSE `keyid`."""
    der = _p256_public(public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def private_key_to_pem(key: ec.EllipticCurvePrivateKey, *, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when `password` is given."""
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password:
        encryption = serialization.BestAvailableEncryption(password)
    return _p256_private(key).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_to_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM, the form pinned on devices as `trust/director.pem`."""
    return _p256_public(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key_pem(
    data: bytes, *, password: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """Load a PEM private key; refuses unreadable PEM (malformed) and non-P-256 keys."""
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"unreadable private key: {exc}") from None
    return _p256_private(key)


def load_public_key_pem(data: bytes | str) -> ec.EllipticCurvePublicKey:
    """Load a PEM public key; refuses unreadable PEM (malformed) and non-P-256 keys."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"unreadable public key: {exc}") from None
    return _p256_public(key)


def write_private_key(
    path: Path | str, key: ec.EllipticCurvePrivateKey, *, password: bytes | None = None
) -> None:
    """Write the key as PEM, mode 0600, atomically."""
    write_atomic(Path(path), private_key_to_pem(key, password=password), mode=0o600)


def write_public_key(path: Path | str, key: ec.EllipticCurvePublicKey) -> None:
    """Write the public key as PEM, mode 0644, atomically."""
    write_atomic(Path(path), public_key_to_pem(key), mode=0o644)


def read_private_key(
    path: Path | str, *, password: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """Read a PEM private key file (see load_private_key_pem)."""
    return load_private_key_pem(Path(path).read_bytes(), password=password)


def read_public_key(path: Path | str) -> ec.EllipticCurvePublicKey:
    """Read a PEM public key file (see load_public_key_pem)."""
    return load_public_key_pem(Path(path).read_bytes())


# --- envelopes ---------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: `DSSEv1 SP LEN(type) SP type SP LEN(body) SP body`."""
    encoded_type = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(encoded_type), encoded_type, len(payload), payload)


def _b64decode(value: object, what: str) -> bytes:
    # DSSE lets producers use the standard or the URL-safe alphabet (we emit standard,
    # padded). Re-encoding must give the input back, so there is exactly one accepted
    # spelling of each byte string (no missing padding, stray bits or mixed alphabets).
    if isinstance(value, str) and value.isascii():
        for altchars, encode in ((None, base64.b64encode), (b"-_", base64.urlsafe_b64encode)):
            try:
                raw = base64.b64decode(value, altchars=altchars, validate=True)
            except (binascii.Error, ValueError):
                continue
            if encode(raw).decode() == value:
                return raw
    raise ProtocolError(ErrorCode.MALFORMED, f"{what} is not base64")


def _is_canonical_der(signature: bytes) -> bool:
    # mbedTLS accepts only strict DER; so do we, which also refuses raw r||s.
    if len(signature) > MAX_DER_SIGNATURE_BYTES:
        return False
    try:
        r, s = decode_dss_signature(signature)
        return encode_dss_signature(r, s) == signature
    except (ValueError, OverflowError):
        return False


# One ECDSA-SHA256 parameter object for every signature (it holds no state).
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
# keyid per signing key, computed once per key rather than once per envelope (DER export
# and SHA-256 of the public key, a noticeable part of signing thousands of envelopes).
# Keyed by the key object itself; the few director keys of a process stay alive anyway.
_SIGNING_KEY_IDS: dict[ec.EllipticCurvePrivateKey, bytes] = {}
_SIGNING_KEY_IDS_MAX = 8
# dumps_json({"payload": ..., "payloadType": ..., "signatures": [{"keyid": ..., "sig": ...}]})
# byte for byte: base64 and hex need no JSON escaping, the payload type is encoded by json.
_ENVELOPE = b'{"payload":"%b","payloadType":%b,"signatures":[{"keyid":"%b","sig":"%b"}]}'


def _signing_key_id(private_key: object) -> bytes:
    """The keyid of a P-256 private key (checked on first use), as ASCII bytes."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        found = _SIGNING_KEY_IDS.get(private_key)
        if found is not None:
            return found
    key = _p256_private(private_key)
    found = key_id(key.public_key()).encode()
    if len(_SIGNING_KEY_IDS) >= _SIGNING_KEY_IDS_MAX:
        _SIGNING_KEY_IDS.clear()
    _SIGNING_KEY_IDS[key] = found
    return found


@lru_cache(maxsize=16)
def _json_string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


def sign_envelope(
    payload: bytes,
    private_key: ec.EllipticCurvePrivateKey,
    *,
    payload_type: str = DESIRED_PAYLOAD_TYPE,
) -> bytes:
    """A compact JSON DSSE envelope over `payload`, at most MAX_ENVELOPE_BYTES."""
    keyid = _signing_key_id(private_key)
    signature = private_key.sign(pae(payload_type, payload), _ECDSA_SHA256)
    envelope = _ENVELOPE % (
        base64.b64encode(payload),
        _json_string(payload_type),
        keyid,
        base64.b64encode(signature),
    )
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"{len(envelope)} bytes > {MAX_ENVELOPE_BYTES}"
        )
    return envelope


def _pinned(key: PinnedKey) -> ec.EllipticCurvePublicKey:
    if isinstance(key, bytes | str):
        return load_public_key_pem(key)
    return _p256_public(key)


def verify_envelope(
    envelope: bytes, pinned_key: PinnedKey, *, payload_type: str = DESIRED_PAYLOAD_TYPE
) -> bytes:
    """Return the payload if a signature by `pinned_key` covers it; else ProtocolError.

    `pinned_key` is an EC P-256 public key or its PEM. Codes: payload_too_large (over
    64 KiB), malformed (not JSON, fields missing or of the wrong type, bad base64),
    signature_invalid (pinned key not P-256, wrong payloadType, no signature with the
    pinned key's keyid, or none of those verifies). Unknown envelope fields are
    ignored, as DSSE requires; nothing in them is trusted.
    """
    key = _pinned(pinned_key)
    obj = loads_json(envelope, max_bytes=MAX_ENVELOPE_BYTES)
    signatures = obj.get("signatures")
    if not isinstance(obj.get("payloadType"), str) or not isinstance(signatures, list):
        raise ProtocolError(ErrorCode.MALFORMED, "envelope needs payloadType and signatures")
    payload = _b64decode(obj.get("payload"), "payload")
    if obj["payloadType"] != payload_type:
        raise ProtocolError(
            ErrorCode.SIGNATURE_INVALID,
            f"payloadType {brief(obj['payloadType'])} is not {payload_type}",
        )
    if not 1 <= len(signatures) <= MAX_SIGNATURES:
        raise ProtocolError(
            ErrorCode.SIGNATURE_INVALID, f"envelope needs 1 to {MAX_SIGNATURES} signatures"
        )
    wanted, candidates = key_id(key), []
    for entry in signatures:
        # An absent keyid counts as "" (DSSE), which matches no key of ours.
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid", ""), str):
            raise ProtocolError(ErrorCode.MALFORMED, "signature entry must be {keyid, sig}")
        signature = _b64decode(entry.get("sig"), "sig")
        if entry.get("keyid") == wanted:
            candidates.append(signature)
    if not candidates:
        raise ProtocolError(ErrorCode.SIGNATURE_INVALID, f"no signature with keyid {wanted}")
    message = pae(payload_type, payload)
    for signature in candidates:
        if not _is_canonical_der(signature):
            continue
        try:
            key.verify(signature, message, _ECDSA_SHA256)
        except InvalidSignature:
            continue
        return payload
    raise ProtocolError(ErrorCode.SIGNATURE_INVALID, "signature does not verify")


def sign_desired(desired: DesiredState, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The retained `desired` message: `desired` signed into a DSSE envelope."""
    return sign_envelope(desired.to_json(), private_key)


def verify_desired(envelope: bytes, pinned_key: PinnedKey) -> DesiredState:
    """Verify a `desired` envelope and parse its payload (signature first, then JSON).

    Only the format is checked here; seq, expiry and device id are the agent's to
    judge against its own state.
    """
    return parse_desired(verify_envelope(envelope, pinned_key))
