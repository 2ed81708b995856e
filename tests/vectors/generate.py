"""Write tests/vectors/desired.json: desired-state vectors for every client (docs/protocol.md).

Run `.venv/bin/python tests/vectors/generate.py` after a protocol change and commit the
result. Envelopes are made by the director's own code (`DesiredState.to_json`,
`sign_envelope`, `pae`) with keys generated per run (only their public halves are
written); ECDSA signatures are randomised, so a new run differs in signature bytes only.
`test_desired_vectors.py` checks that the file still matches this generator and that
the Python agent decides every vector as it says.

Each vector: `envelope` (base64 of the exact bytes), `context` (the device's side),
`expect` (what every client must decide, the C client included) and, where the Python
agent decides differently because of a documented C limit, `python` (its decision).
"""

import base64
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
    sign_envelope,
)
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    DesiredState,
    ModelTarget,
    format_timestamp,
    loads_json,
    parse_acks,
)

OUT = Path(__file__).with_name("desired.json")
JSON_OUT = Path(__file__).with_name("json.json")
UPDATE_OUT = Path(__file__).with_name("update.json")
CODES_OUT = Path(__file__).with_name("codes.json")
ACKS_OUT = Path(__file__).with_name("acks.json")
# The C client's fuzz seed corpus, from the same vectors (device_agent/esp32/README.md).
CORPUS = Path(__file__).parents[2] / "device_agent" / "esp32" / "host" / "fuzz" / "corpus"
FORMAT = 1

# The C client's documented limits (docs/protocol.md, "The C client's limits").
C_MAX_ENVELOPE = 16384
C_MAX_SKEW_S = 300
C_MAX_DEPTH = 16
C_MAX_TOKENS = 1024

DEVICE = "esp32-0001"
HARDWARE = "esp32s3-int8"
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
ISSUED = NOW - timedelta(hours=1)
EXPIRES = ISSUED + timedelta(days=7)
SHA_A = hashlib.sha256(b"kws 1.4.0").hexdigest()
SHA_B = hashlib.sha256(b"vad 2.0.0").hexdigest()


def target(
    name: str = "kws",
    version: str = "1.4.0",
    release_counter: int = 14,
    hardware: str = HARDWARE,
    sha256: str = SHA_A,
    length: int = 48213,
    rollout_id: str | None = "r-9",
    arm: str | None = "B",
    url_suffix: str = "",
) -> ModelTarget:
    path = f"models/{name}/{version}/{hardware}/model.tflite"
    url = (
        f"https://fleet.example.com/tuf/targets/models/{name}/{version}/{hardware}/"
        f"{sha256}.model.tflite{url_suffix}"
    )
    return ModelTarget(
        name=name,
        path=path,
        version=version,
        release_counter=release_counter,
        hardware=hardware,
        sha256=sha256,
        length=length,
        url=url,
        rollout_id=rollout_id,
        arm=arm,
    )


def desired(**changes: Any) -> DesiredState:
    base = DesiredState(
        device_id=DEVICE, seq=17, issued_at=ISSUED, expires_at=EXPIRES, models=(target(),)
    )
    return replace(base, **changes)


@dataclass(frozen=True)
class Keys:
    director: ec.EllipticCurvePrivateKey
    other: ec.EllipticCurvePrivateKey


@dataclass
class Context:
    """The device's side of a vector (what a client holds in its persistent state)."""

    device_id: str = DEVICE
    hardware: str = HARDWARE
    now: datetime = NOW
    last_seq: int | None = 16
    last_digest: str | None = "0" * 64
    last_trusted_time: datetime | None = NOW - timedelta(days=1)
    floors: dict[str, int] = field(default_factory=lambda: {"kws": 10})

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "hardware": self.hardware,
            "now": format_timestamp(self.now),
            "last_seq": self.last_seq,
            "last_digest": self.last_digest,
            "last_trusted_time": None
            if self.last_trusted_time is None
            else format_timestamp(self.last_trusted_time),
            "floors": self.floors,
        }


# --- envelope builders -------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw_sign(key: ec.EllipticCurvePrivateKey, payload: bytes, ptype: str) -> bytes:
    return key.sign(pae(ptype, payload), ec.ECDSA(hashes.SHA256()))


def envelope_text(
    payload: bytes,
    sigs: list[dict[str, Any]],
    *,
    ptype: str = DESIRED_PAYLOAD_TYPE,
    payload_b64: str | None = None,
) -> bytes:
    obj = {
        "payload": b64(payload) if payload_b64 is None else payload_b64,
        "payloadType": ptype,
        "signatures": sigs,
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def signed_raw(key: ec.EllipticCurvePrivateKey, payload: bytes, **kw: Any) -> bytes:
    """An envelope over payload bytes the dataclasses would not produce."""
    sig = raw_sign(key, payload, DESIRED_PAYLOAD_TYPE)
    return envelope_text(payload, [{"keyid": key_id(key.public_key()), "sig": b64(sig)}], **kw)


def edit(envelope: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    obj = json.loads(envelope)
    change(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def sig_of(envelope: bytes) -> bytes:
    return base64.b64decode(json.loads(envelope)["signatures"][0]["sig"])


def with_sig(envelope: bytes, sig: bytes) -> bytes:
    def change(obj: dict[str, Any]) -> None:
        obj["signatures"][0]["sig"] = b64(sig)

    return edit(envelope, change)


def non_minimal_der(sig: bytes) -> bytes:
    # Same r and s, r written with a superfluous leading zero byte.
    r, s = decode_dss_signature(sig)

    def integer(value: int, pad: bool) -> bytes:
        body = value.to_bytes((value.bit_length() + 8) // 8, "big")
        if pad:
            body = b"\x00" + body
        return b"\x02" + bytes([len(body)]) + body

    body = integer(r, True) + integer(s, False)
    return b"\x30" + bytes([len(body)]) + body


def raw_rs(sig: bytes) -> bytes:
    r, s = decode_dss_signature(sig)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def payload_json(**changes: Any) -> dict[str, Any]:
    return desired(**changes).to_dict()


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --- the vectors -------------------------------------------------------------------


@dataclass
class Vector:
    name: str
    about: str
    envelope: bytes
    expect: dict[str, Any]
    context: Context = field(default_factory=Context)
    python: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "about": self.about,
            "envelope": b64(self.envelope),
            "context": self.context.to_dict(),
            "expect": self.expect,
        }
        if self.python is not None:
            out["python"] = self.python
        return out


def accepted(seq: int = 17, jobs: tuple[str, ...] = ("kws",), **rejected: str) -> dict[str, Any]:
    return {
        "outcome": "accepted",
        "seq": seq,
        "jobs": list(jobs),
        "rejected": [{"model": m, "code": c} for m, c in rejected.items()],
    }


def rejected(code: str, seq: int = 0) -> dict[str, Any]:
    return {"outcome": "rejected", "code": code, "seq": seq}


def build(keys: Keys) -> list[Vector]:
    d, o = keys.director, keys.other
    good = sign_envelope(desired().to_json(), d)
    v: list[Vector] = []

    def add(name: str, about: str, envelope: bytes, expect: dict[str, Any], **kw: Any) -> None:
        v.append(Vector(name, about, envelope, expect, **kw))

    # Accepted.
    add("valid", "one model for this device's hardware", good, accepted())
    add(
        "valid_no_rollout",
        "rollout_id and arm null",
        sign_envelope(desired(models=(target(rollout_id=None, arm=None),)).to_json(), d),
        accepted(),
    )
    add(
        "valid_empty_models",
        "no model entries: accepted, nothing to do",
        sign_envelope(desired(models=()).to_json(), d),
        accepted(jobs=()),
    )
    add(
        "valid_first_envelope",
        "a fresh device: no seq, digest or trusted time stored yet",
        good,
        accepted(),
        context=Context(last_seq=None, last_digest=None, last_trusted_time=None),
    )
    mixed = desired(
        models=(
            target(),
            target(name="vad", hardware="jetson-orin-fp16", sha256=SHA_B),
            target(name="wake", version="0.3.0", release_counter=3),
        )
    )
    add(
        "valid_mixed_models",
        "one job; one entry for other hardware, one below its floor",
        sign_envelope(mixed.to_json(), d),
        accepted(vad="hw_mismatch", wake="downgrade_refused"),
        context=Context(floors={"kws": 10, "wake": 5}),
    )
    add(
        "below_floor",
        "release_counter 14 under the stored floor 15",
        good,
        accepted(jobs=(), kws="downgrade_refused"),
        context=Context(floors={"kws": 15}),
    )
    add(
        "at_floor",
        "release_counter equal to the floor is allowed",
        good,
        accepted(),
        context=Context(floors={"kws": 14}),
    )
    add(
        "hw_mismatch",
        "the only entry is for other hardware",
        sign_envelope(desired(models=(target(hardware="esp32c3-int8"),)).to_json(), d),
        accepted(jobs=(), kws="hw_mismatch"),
    )
    rotated = envelope_text(
        desired().to_json(),
        [
            {
                "keyid": key_id(o.public_key()),
                "sig": b64(raw_sign(o, desired().to_json(), DESIRED_PAYLOAD_TYPE)),
            },
            {"keyid": key_id(d.public_key()), "sig": b64(sig_of(good))},
        ],
    )
    add("valid_key_rotation", "two signatures, the pinned key's second", rotated, accepted())
    # A URL whose base64 has '+' (four '~' give a 6-bit group of 111110 at any offset).
    tilde = desired(models=(target(url_suffix="?q=~~~~"),)).to_json()
    tilde_b64 = b64(tilde)
    if "+" not in tilde_b64:
        raise AssertionError("the tilde payload's base64 has no '+'")
    tilde_sig = raw_sign(d, tilde, DESIRED_PAYLOAD_TYPE)
    add(
        "valid_urlsafe_base64",
        "payload and sig in the URL-safe alphabet ('-' for '+')",
        envelope_text(
            tilde,
            [
                {
                    "keyid": key_id(d.public_key()),
                    "sig": base64.urlsafe_b64encode(tilde_sig).decode(),
                }
            ],
            payload_b64=base64.urlsafe_b64encode(tilde).decode(),
        ),
        accepted(),
    )
    add(
        "valid_standard_base64_plus",
        "the same payload in the standard alphabet",
        signed_raw(d, tilde),
        accepted(),
    )
    add(
        "valid_unknown_envelope_fields",
        "unknown envelope keys (nested, numbers, null) are ignored as DSSE says",
        edit(good, lambda obj: obj.update(x={"a": [1, -2.5e3, None, True, {"b": "\u00e9"}]})),
        accepted(),
    )
    escaped = (
        dumps(payload_json())
        .replace(b'"v":', b'"\\u0076":')
        .replace(b'"kws"', b'"k\\u0077s"')
        .replace(b"/tuf/", b"\\/tuf\\/")
    )
    add(
        "valid_escaped_strings",
        "keys and values with JSON escapes are compared after unescaping",
        signed_raw(d, escaped),
        accepted(),
    )
    add(
        "valid_whitespace",
        "JSON whitespace between tokens",
        signed_raw(d, json.dumps(payload_json(), indent=2).encode() + b"\r\n"),
        accepted(),
    )
    add(
        "ignored_redelivered",
        "the retained copy of the envelope last accepted",
        good,
        {"outcome": "ignored"},
        context=Context(last_seq=17, last_digest=hashlib.sha256(good).hexdigest()),
    )

    # Refused by the signature.
    other_payload = desired(seq=18).to_json()
    add(
        "bad_signature",
        "a valid signature by the pinned key, over another payload",
        with_sig(good, raw_sign(d, other_payload, DESIRED_PAYLOAD_TYPE)),
        rejected("signature_invalid"),
    )
    add(
        "altered_payload",
        "payload changed after signing (seq 17 -> 18)",
        edit(good, lambda obj: obj.update(payload=b64(other_payload))),
        rejected("signature_invalid"),
    )
    add(
        "wrong_key",
        "signed by another key, with that key's keyid",
        sign_envelope(desired().to_json(), o),
        rejected("signature_invalid"),
    )
    add(
        "wrong_key_pinned_keyid",
        "signed by another key, claiming the pinned keyid",
        with_sig(good, sig_of(sign_envelope(desired().to_json(), o))),
        rejected("signature_invalid"),
    )
    add(
        "no_keyid",
        "a signature entry without keyid matches no key",
        edit(good, lambda obj: obj["signatures"][0].pop("keyid")),
        rejected("signature_invalid"),
    )
    add(
        "wrong_payload_type",
        "payloadType other than application/vnd.fleet.desired+json (signed over it)",
        envelope_text(
            desired().to_json(),
            [
                {
                    "keyid": key_id(d.public_key()),
                    "sig": b64(raw_sign(d, desired().to_json(), "application/json")),
                }
            ],
            ptype="application/json",
        ),
        rejected("signature_invalid"),
    )
    add(
        "pae_type_swapped",
        "signed over PAE with another type, labelled with ours",
        envelope_text(
            desired().to_json(),
            [
                {
                    "keyid": key_id(d.public_key()),
                    "sig": b64(raw_sign(d, desired().to_json(), "application/json")),
                }
            ],
        ),
        rejected("signature_invalid"),
    )
    add(
        "no_signatures",
        "an empty signatures array",
        edit(good, lambda obj: obj.update(signatures=[])),
        rejected("signature_invalid"),
    )
    add(
        "five_signatures",
        "more than 4 signatures",
        edit(good, lambda obj: obj.update(signatures=obj["signatures"] * 5)),
        rejected("signature_invalid"),
    )
    add(
        "raw_rs_signature",
        "r||s instead of DER",
        with_sig(good, raw_rs(sig_of(good))),
        rejected("signature_invalid"),
    )
    add(
        "non_minimal_der",
        "DER with a superfluous leading zero",
        with_sig(good, non_minimal_der(sig_of(good))),
        rejected("signature_invalid"),
    )
    add(
        "der_trailing_byte",
        "a valid DER signature followed by a byte",
        with_sig(good, sig_of(good) + b"\x00"),
        rejected("signature_invalid"),
    )

    # Refused by the envelope's format.
    add("not_json", "not JSON", b"desired", rejected("malformed"))
    add("envelope_array", "a JSON array", b"[]", rejected("malformed"))
    add("empty", "zero bytes", b"", rejected("malformed"))
    add("bom", "a UTF-8 byte order mark first", b"\xef\xbb\xbf" + good, rejected("malformed"))
    add(
        "invalid_utf8",
        "an invalid UTF-8 byte in an ignored string",
        good[:-1] + b',"x":"\xff"}',
        rejected("malformed"),
    )
    add(
        "utf8_surrogate",
        "a UTF-8 encoded surrogate (ED A0 80) in an ignored string",
        good[:-1] + b',"x":"\xed\xa0\x80"}',
        rejected("malformed"),
    )
    add(
        "overlong_utf8",
        "an overlong UTF-8 encoding of '/'",
        good[:-1] + b',"x":"\xc0\xaf"}',
        rejected("malformed"),
    )
    add(
        "control_char_in_string",
        "a raw control character in an ignored string",
        good[:-1] + b',"x":"a\tb"}',
        rejected("malformed"),
    )
    add("trailing_garbage", "bytes after the object", good + b"x", rejected("malformed"))
    add("trailing_comma", "a trailing comma", good[:-1] + b",}", rejected("malformed"))
    add("nan", "NaN in an ignored field", good[:-1] + b',"x":NaN}', rejected("malformed"))
    add(
        "number_overflow",
        "1e999 in an ignored field",
        good[:-1] + b',"x":1e999}',
        rejected("malformed"),
    )
    add(
        "leading_zero",
        "a number with a leading zero",
        good[:-1] + b',"x":01}',
        rejected("malformed"),
    )
    add(
        "bad_escape",
        "an invalid escape in an ignored string",
        good[:-1] + b',"x":"\\x41"}',
        rejected("malformed"),
    )
    add(
        "duplicate_envelope_key",
        "payload given twice (parsers differ on which wins)",
        b'{"payload":"e30=",' + good[1:],
        rejected("malformed"),
    )
    add(
        "duplicate_key_escaped",
        "payloadType given twice, once escaped",
        good[:-1] + b',"payload\\u0054ype":"x"}',
        rejected("malformed"),
    )
    add(
        "duplicate_key_in_ignored_field",
        "duplicate keys inside an ignored field",
        good[:-1] + b',"x":{"a":1,"a":2}}',
        rejected("malformed"),
    )
    add(
        "payload_type_not_string",
        "payloadType a number",
        edit(good, lambda obj: obj.update(payloadType=1)),
        rejected("malformed"),
    )
    add(
        "signatures_not_array",
        "signatures an object",
        edit(good, lambda obj: obj.update(signatures={})),
        rejected("malformed"),
    )
    add(
        "signature_not_object",
        "a signature entry that is a string",
        edit(good, lambda obj: obj["signatures"].append("x")),
        rejected("malformed"),
    )
    add(
        "keyid_not_string",
        "keyid a number",
        edit(good, lambda obj: obj["signatures"][0].update(keyid=1)),
        rejected("malformed"),
    )
    add(
        "missing_payload",
        "no payload",
        edit(good, lambda obj: obj.pop("payload")),
        rejected("malformed"),
    )
    add(
        "bad_base64_payload",
        "a character outside both alphabets",
        edit(good, lambda obj: obj.update(payload="*" + obj["payload"][1:])),
        rejected("malformed"),
    )
    add(
        "base64_unpadded",
        "payload without its padding",
        signed_raw(
            d,
            desired().to_json() + b" ",  # length not a multiple of 3: padding needed
            payload_b64=b64(desired().to_json() + b" ").rstrip("="),
        ),
        rejected("malformed"),
    )
    mixed_b64 = tilde_b64.replace("+", "-", 1)
    if "+" not in mixed_b64 and "/" not in mixed_b64:
        mixed_b64 = mixed_b64[:-4] + "/" + mixed_b64[-3:]  # never reached with four '~'
    add(
        "base64_mixed_alphabets",
        "'-' and '+' in one string",
        signed_raw(d, tilde, payload_b64=mixed_b64),
        rejected("malformed"),
    )
    spaced = desired().to_json() + b" " * ((1 - len(desired().to_json())) % 3)
    spaced_b64 = b64(spaced)
    stray = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = spaced_b64[-3]
    if not spaced_b64.endswith("=="):
        raise AssertionError("the spaced payload needs two padding characters")
    add(
        "base64_stray_bits",
        "non-zero bits in the last character before the padding",
        signed_raw(
            d,
            spaced,
            payload_b64=spaced_b64[:-3] + stray[stray.index(last) + 1] + "==",
        ),
        rejected("malformed"),
    )
    add(
        "base64_whitespace",
        "a newline inside the base64",
        edit(good, lambda obj: obj.update(payload=obj["payload"][:8] + "\n" + obj["payload"][8:])),
        rejected("malformed"),
    )
    add(
        "bad_base64_sig",
        "sig not base64 (in an entry of another keyid too)",
        edit(good, lambda obj: obj["signatures"].append({"keyid": "x", "sig": "!"})),
        rejected("malformed"),
    )
    big = edit(good, lambda obj: obj.update(x="a" * 65536))
    add("oversized", "over 65 536 bytes", big, rejected("payload_too_large"))
    add(
        "oversized_for_c",
        "over the C client's 16 384 bytes, under 65 536",
        edit(good, lambda obj: obj.update(x="a" * C_MAX_ENVELOPE)),
        rejected("payload_too_large"),
        python=accepted(),
    )

    # Refused by the payload's format (signed by the director key).
    def signed_obj(obj: object) -> bytes:
        return signed_raw(d, dumps(obj))

    def changed(**fields: Any) -> bytes:
        obj = payload_json()
        obj.update(fields)
        return signed_obj(obj)

    def changed_model(**fields: Any) -> bytes:
        obj = payload_json()
        obj["models"][0].update(fields)
        return signed_obj(obj)

    add("payload_not_object", "a signed JSON array", signed_raw(d, b"[]"), rejected("malformed"))
    add(
        "payload_not_json",
        "signed bytes that are not JSON",
        signed_raw(d, b"\x00"),
        rejected("malformed"),
    )
    add("version_2", '"v": 2', changed(v=2), rejected("malformed"))
    add("version_float", '"v": 1.0', changed(v=1.0), rejected("malformed"))
    add("version_true", '"v": true', changed(v=True), rejected("malformed"))
    missing = payload_json()
    del missing["expires_at"]
    add("missing_key", "no expires_at", signed_obj(missing), rejected("malformed"))
    add("unknown_key", "an extra key", changed(extra=1), rejected("malformed"))
    add(
        "duplicate_payload_key",
        "seq twice in the signed payload",
        signed_raw(d, desired().to_json()[:-1] + b',"seq":99}'),
        rejected("malformed"),
    )
    add(
        "duplicate_model_key",
        "a model entry with sha256 twice",
        signed_raw(d, desired().to_json().replace(b'"sha256":', b'"sha256":"x","sha256":', 1)),
        rejected("malformed"),
    )
    add("seq_float", "seq 17.0", changed(seq=17.0), rejected("malformed"))
    add(
        "seq_exponent",
        "seq 1.7e1",
        signed_raw(d, desired().to_json().replace(b'"seq":17', b'"seq":1.7e1')),
        rejected("malformed"),
    )
    add("seq_negative", "seq -1", changed(seq=-1), rejected("malformed"))
    add("seq_too_large", "seq 2**53", changed(seq=2**53), rejected("malformed"))
    add("seq_string", 'seq "17"', changed(seq="17"), rejected("malformed"))
    add(
        "seq_max",
        "seq 2**53 - 1 is the largest accepted",
        sign_envelope(desired(seq=2**53 - 1).to_json(), d),
        accepted(seq=2**53 - 1),
    )
    add(
        "device_id_bad",
        "device id with a space",
        changed(device_id="esp32 0001"),
        rejected("malformed"),
    )
    add(
        "device_id_newline",
        "device id with a trailing newline",
        changed(device_id=DEVICE + "\n"),
        rejected("malformed"),
    )
    add(
        "timestamp_no_z",
        "issued_at without Z",
        changed(issued_at="2026-12-01T11:00:00"),
        rejected("malformed"),
    )
    add(
        "timestamp_offset",
        "issued_at with +00:00",
        changed(issued_at="2026-12-01T11:00:00+00:00"),
        rejected("malformed"),
    )
    add(
        "timestamp_not_a_date",
        "30 February",
        changed(issued_at="2026-02-30T11:00:00Z"),
        rejected("malformed"),
    )
    add(
        "timestamp_leap_second",
        "second 60",
        changed(issued_at="2026-12-01T11:00:60Z"),
        rejected("malformed"),
    )
    add(
        "timestamp_year_zero",
        "year 0000",
        changed(issued_at="0000-12-01T11:00:00Z"),
        rejected("malformed"),
    )
    add(
        "timestamp_fraction",
        "issued_at with microseconds is valid",
        changed(issued_at="2026-12-01T11:00:00.123456Z"),
        accepted(),
    )
    add(
        "timestamp_leap_day",
        "29 February of a leap year is valid",
        changed(issued_at="2028-02-29T11:00:00Z", expires_at="2028-03-07T11:00:00Z"),
        accepted(),
        context=Context(now=datetime(2028, 2, 29, 11, 30, tzinfo=UTC)),
    )
    add(
        "expires_before_issued",
        "expires_at equal to issued_at",
        changed(expires_at=format_timestamp(ISSUED)),
        rejected("malformed"),
    )
    add("models_not_array", "models an object", changed(models={}), rejected("malformed"))
    many = payload_json(models=())
    many["models"] = [
        payload_json(models=(target(name=f"m{i}", rollout_id=None, arm=None),))["models"][0]
        for i in range(33)
    ]
    for i, entry in enumerate(many["models"]):
        entry["url"] = f"https://e.co/{i}"  # short: the envelope stays under 16 KiB
    add("too_many_models", "33 model entries", signed_obj(many), rejected("malformed"))
    add(
        "duplicate_model_names",
        "kws listed twice",
        changed(models=[payload_json()["models"][0], payload_json()["models"][0]]),
        rejected("malformed"),
    )
    add("sha256_upper", "uppercase hex", changed_model(sha256=SHA_A.upper()), rejected("malformed"))
    add("length_negative", "length -1", changed_model(length=-1), rejected("malformed"))
    add(
        "release_counter_bool",
        "release_counter true",
        changed_model(release_counter=True),
        rejected("malformed"),
    )
    add("url_ftp", "ftp URL", changed_model(url="ftp://example.com/m"), rejected("malformed"))
    add(
        "url_space",
        "a space in the URL",
        changed_model(url="https://example.com/a b"),
        rejected("malformed"),
    )
    add("url_no_host", "https:///path", changed_model(url="https:///path"), rejected("malformed"))
    add(
        "url_lone_surrogate",
        "an escaped lone surrogate in the URL",
        signed_raw(d, desired().to_json().replace(b"https://", b"https://\\ud800", 1)),
        rejected("malformed"),
    )
    add(
        "url_non_ascii",
        "non-ASCII text in the URL is allowed",
        changed_model(url="https://example.com/mod\u00e8le/\U0001f600"),
        accepted(),
    )
    add(
        "url_too_long",
        "a 4 097-character URL",
        changed_model(url="https://e.com/" + "a" * (4097 - 14)),
        rejected("malformed"),
    )
    add(
        "version_leading_zero",
        "version 01.4.0",
        changed_model(version="01.4.0"),
        rejected("malformed"),
    )
    add("arm_bad", "arm with a dot", changed_model(arm="a.b"), rejected("malformed"))
    add(
        "name_bad",
        "model name starting with a dot",
        changed_model(name=".kws"),
        rejected("malformed"),
    )
    add(
        "path_dotdot",
        "a '..' segment in the path",
        changed_model(path="models/kws/../kws/1.4.0/esp32s3-int8/model.tflite"),
        rejected("invalid_target_path"),
    )
    add(
        "path_other_version",
        "path disagrees with version",
        changed_model(path=f"models/kws/1.3.0/{HARDWARE}/model.tflite"),
        rejected("invalid_target_path"),
    )
    add(
        "path_absolute",
        "path starting with /",
        changed_model(path=f"/models/kws/1.4.0/{HARDWARE}/model.tflite"),
        rejected("invalid_target_path"),
    )
    add(
        "path_backslash",
        "a backslash in the filename",
        changed_model(path=f"models/kws/1.4.0/{HARDWARE}/model\\x.tflite"),
        rejected("invalid_target_path"),
    )
    bad_path_then_device = payload_json(device_id="x")
    bad_path_then_device["device_id"] = "bad id"
    bad_path_then_device["models"][0]["path"] = "models/kws"
    add(
        "order_path_before_device_id",
        "a bad path and a bad device id: models are checked first",
        signed_obj(bad_path_then_device),
        rejected("invalid_target_path"),
    )

    # Refused by the device's state.
    add(
        "wrong_device",
        "addressed to another device",
        sign_envelope(desired(device_id="esp32-0002").to_json(), d),
        rejected("wrong_device", 17),
    )
    add(
        "replayed_same_seq",
        "seq equal to the last accepted, other bytes",
        good,
        rejected("replayed_command", 17),
        context=Context(last_seq=17),
    )
    add(
        "replayed_older_seq",
        "seq below the last accepted",
        good,
        rejected("replayed_command", 17),
        context=Context(last_seq=40),
    )
    add(
        "expired",
        "expires_at before the clock",
        good,
        rejected("command_expired", 17),
        context=Context(now=EXPIRES + timedelta(seconds=1)),
    )
    add(
        "expired_at_boundary",
        "expires_at equal to the clock",
        good,
        rejected("command_expired", 17),
        context=Context(now=EXPIRES),
    )
    add(
        "expired_by_trusted_time",
        "clock set back, but the last trusted time is past expiry",
        good,
        rejected("command_expired", 17),
        context=Context(now=ISSUED, last_trusted_time=EXPIRES + timedelta(hours=1)),
    )
    add(
        "issued_in_future",
        f"issued_at more than {C_MAX_SKEW_S} s ahead of the device's clock",
        sign_envelope(
            desired(
                issued_at=NOW + timedelta(seconds=C_MAX_SKEW_S + 1),
                expires_at=NOW + timedelta(days=7),
            ).to_json(),
            d,
        ),
        rejected("issued_in_future", 17),
    )
    add(
        "issued_in_future_within_skew",
        f"issued_at {C_MAX_SKEW_S} s after the clock is accepted",
        sign_envelope(
            desired(
                issued_at=NOW + timedelta(seconds=C_MAX_SKEW_S),
                expires_at=NOW + timedelta(days=7),
            ).to_json(),
            d,
        ),
        accepted(),
    )
    return v


def document(keys: Keys) -> dict[str, Any]:
    vectors = build(keys)
    names = [vector.name for vector in vectors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate vector name")
    for vector in vectors:
        if (
            len(vector.envelope) > C_MAX_ENVELOPE
            and vector.expect.get("code") != "payload_too_large"
        ):
            raise ValueError(f"{vector.name} is over the C client's envelope bound")
    return {
        "format": FORMAT,
        "about": "Generated by tests/vectors/generate.py; see docs/protocol.md.",
        "payload_type": DESIRED_PAYLOAD_TYPE,
        "director_key": public_key_to_pem(keys.director.public_key()).decode(),
        "director_keyid": key_id(keys.director.public_key()),
        "other_key": public_key_to_pem(keys.other.public_key()).decode(),
        "limits": {"c_max_envelope": C_MAX_ENVELOPE, "c_max_skew_s": C_MAX_SKEW_S},
        "vectors": [vector.to_dict() for vector in vectors],
    }


# --- strict JSON ---------------------------------------------------------------------

# DBL_MAX + half an ulp, the smallest decimal that overflows to inf, as an integer.
_OVERFLOW = (2**1024 - 2**970) // 1


def json_inputs() -> list[tuple[str, bytes]]:
    """Documents for the strict JSON decoders; each is judged by loads_json."""
    deep = b'{"a":' * C_MAX_DEPTH + b"1" + b"}" * C_MAX_DEPTH
    deeper = b'{"a":' + b"[" * C_MAX_DEPTH + b"]" * C_MAX_DEPTH + b"}"
    wide = b'{"a":[' + b",".join(b"0" for _ in range(C_MAX_TOKENS - 3)) + b"]}"
    wider = b'{"a":[' + b",".join(b"0" for _ in range(C_MAX_TOKENS - 2)) + b"]}"
    return [
        ("empty_object", b"{}"),
        ("whitespace", b' \t\r\n{ "a" : [ 1 , 2 ] }\n '),
        ("form_feed", b"\x0c{}"),
        ("vertical_tab", b"{}\x0b"),
        ("nbsp", b"\xc2\xa0{}"),
        ("bom", b"\xef\xbb\xbf{}"),
        ("array_top", b"[]"),
        ("string_top", b'"x"'),
        ("number_top", b"1"),
        ("trailing_comma_object", b'{"a":1,}'),
        ("trailing_comma_array", b'{"a":[1,]}'),
        ("missing_comma", b'{"a":1 "b":2}'),
        ("missing_value", b'{"a"}'),
        ("missing_colon", b'{"a" 1}'),
        ("unclosed", b'{"a":1'),
        ("unclosed_string", b'{"a":"x}'),
        ("single_quotes", b"{'a':1}"),
        ("unquoted_key", b"{a:1}"),
        ("trailing_garbage", b"{}x"),
        ("two_documents", b"{}{}"),
        ("literals", b'{"a":[true,false,null]}'),
        ("literal_bad", b'{"a":tru}'),
        ("literal_case", b'{"a":True}'),
        ("nan", b'{"a":NaN}'),
        ("infinity", b'{"a":Infinity}'),
        ("minus_infinity", b'{"a":-Infinity}'),
        ("zero", b'{"a":0}'),
        ("minus_zero", b'{"a":-0}'),
        ("minus_zero_float", b'{"a":-0.0}'),
        ("leading_zero", b'{"a":01}'),
        ("leading_zero_negative", b'{"a":-01}'),
        ("bare_minus", b'{"a":-}'),
        ("double_minus", b'{"a":--1}'),
        ("plus", b'{"a":+1}'),
        ("dot_first", b'{"a":.5}'),
        ("dot_last", b'{"a":1.}'),
        ("exponent_empty", b'{"a":1e}'),
        ("exponent_sign_only", b'{"a":1e+}'),
        ("exponent_upper", b'{"a":1E5}'),
        ("exponent_negative", b'{"a":1e-5}'),
        ("hex_number", b'{"a":0x10}'),
        ("dbl_max", b'{"a":1.7976931348623157e308}'),
        ("dbl_max_rounds_down", b'{"a":1.7976931348623158e308}'),
        ("dbl_max_overflows", b'{"a":1.7976931348623159e308}'),
        ("overflow_boundary_below", b'{"a":%d.9}' % (_OVERFLOW - 1)),
        ("overflow_boundary", b'{"a":%d.0}' % _OVERFLOW),
        ("e308", b'{"a":1e308}'),
        ("e309", b'{"a":1e309}'),
        ("fraction_e310", b'{"a":0.1e310}'),
        ("fraction_e309", b'{"a":0.99e309}'),
        ("huge_exponent", b'{"a":1e99999999999999999999}'),
        ("zero_huge_exponent", b'{"a":0e99999999999999999999}'),
        ("underflow", b'{"a":1e-400}'),
        ("int_4300_digits", b'{"a":%b}' % (b"1" * 4300)),
        ("int_4301_digits", b'{"a":%b}' % (b"1" * 4301)),
        ("long_fraction", b'{"a":0.%b}' % (b"1" * 5000)),
        ("escapes", b'{"a":"\\"\\\\\\/\\b\\f\\n\\r\\t"}'),
        ("escape_unknown", b'{"a":"\\a"}'),
        ("escape_upper_u", b'{"a":"\\U0041"}'),
        ("escape_short_u", b'{"a":"\\u12"}'),
        ("escape_nul", b'{"a":"\\u0000"}'),
        ("escape_lone_surrogate", b'{"a":"\\ud800"}'),
        ("escape_pair", b'{"a":"\\ud83d\\ude00"}'),
        ("escape_reversed_pair", b'{"a":"\\ude00\\ud83d"}'),
        ("raw_tab", b'{"a":"\t"}'),
        ("raw_nul", b'{"a":"\x00"}'),
        ("raw_del", b'{"a":"\x7f"}'),
        ("utf8_2", b'{"a":"\xc3\xa9"}'),
        ("utf8_4", b'{"a":"\xf0\x9f\x98\x80"}'),
        ("utf8_max", b'{"a":"\xf4\x8f\xbf\xbf"}'),
        ("utf8_above_max", b'{"a":"\xf4\x90\x80\x80"}'),
        ("utf8_f5", b'{"a":"\xf5\x80\x80\x80"}'),
        ("utf8_overlong_2", b'{"a":"\xc0\xaf"}'),
        ("utf8_overlong_3", b'{"a":"\xe0\x80\xaf"}'),
        ("utf8_overlong_4", b'{"a":"\xf0\x80\x80\xaf"}'),
        ("utf8_surrogate", b'{"a":"\xed\xa0\x80"}'),
        ("utf8_lone_continuation", b'{"a":"\x80"}'),
        ("utf8_truncated", b'{"a":"\xe2\x82"}'),
        ("utf8_outside_string", b'{"a":1}\xc3\xa9'),
        ("duplicate", b'{"a":1,"a":2}'),
        ("duplicate_escaped", b'{"a":1,"\\u0061":2}'),
        ("duplicate_non_ascii", b'{"\xc3\xa9":1,"\\u00e9":2}'),
        ("duplicate_surrogates", b'{"\\ud800":1,"\\ud800":2}'),
        ("duplicate_pair_and_raw", b'{"\\ud83d\\ude00":1,"\xf0\x9f\x98\x80":2}'),
        ("duplicate_nested", b'{"x":{"a":1,"a":2}}'),
        ("duplicate_in_array", b'{"x":[{"a":1,"a":2}]}'),
        ("same_key_other_objects", b'{"a":{"a":1},"b":{"a":1}}'),
        ("prefix_keys", b'{"a":1,"ab":2,"":3}'),
        ("depth_at_c_limit", deep),
        ("depth_over_c_limit", deeper),
        ("tokens_at_c_limit", wide),
        ("tokens_over_c_limit", wider),
    ]


def json_verdict(data: bytes) -> str:
    try:
        loads_json(data)
    except ProtocolError as exc:
        return str(exc.code)
    return "ok"


def json_document() -> dict[str, Any]:
    over_c = {"depth_over_c_limit", "tokens_over_c_limit"}
    cases = []
    for name, data in json_inputs():
        case: dict[str, Any] = {"name": name, "input": b64(data), "expect": json_verdict(data)}
        if name in over_c:
            case["python"], case["expect"] = case["expect"], "malformed"
        cases.append(case)
    return {
        "format": FORMAT,
        "about": "Generated by tests/vectors/generate.py from loads_json; see docs/protocol.md.",
        "limits": {"c_max_depth": C_MAX_DEPTH, "c_max_tokens": C_MAX_TOKENS},
        "cases": cases,
    }


def codes_text() -> str:
    """The stable error codes, in ErrorCode's order, for the C suite to check."""
    return (
        json.dumps({"format": FORMAT, "codes": [str(code) for code in ErrorCode]}, indent=1) + "\n"
    )


def acks_document() -> dict[str, Any]:
    """`acks` payloads (docs/protocol.md) and whether the Python agent's parse_acks takes
    them: the C client must take exactly the same ones (and ignore the others whole)."""
    one, two = "0123456789abcdef" * 2, "fedcba9876543210" * 2
    inputs: dict[str, bytes] = {
        "events": b'{"v":1,"event_ids":["%s","%s"]}' % (one.encode(), two.encode()),
        "batches": b'{"v":1,"batch_ids":["%s"]}' % one.encode(),
        "both": b'{"batch_ids":["%s"],"event_ids":["%s"],"v":1}' % (two.encode(), one.encode()),
        "escaped_id": b'{"v":1,"event_ids":["\\u0030%s"]}' % one[1:].encode(),
        "max_ids": json.dumps({"v": 1, "event_ids": [one] * 500}).encode(),
        "too_many_ids": json.dumps({"v": 1, "event_ids": [one] * 501}).encode(),
        "empty_list": b'{"v":1,"event_ids":[]}',
        "no_list": b'{"v":1}',
        "no_version": b'{"event_ids":["%s"]}' % one.encode(),
        "version_2": b'{"v":2,"event_ids":["%s"]}' % one.encode(),
        "version_true": b'{"v":true,"event_ids":["%s"]}' % one.encode(),
        "version_float": b'{"v":1.0,"event_ids":["%s"]}' % one.encode(),
        "unknown_key": b'{"v":1,"event_ids":["%s"],"x":1}' % one.encode(),
        "upper_hex": b'{"v":1,"event_ids":["%s"]}' % one.upper().encode(),
        "short_id": b'{"v":1,"event_ids":["%s"]}' % one[:31].encode(),
        "long_id": b'{"v":1,"event_ids":["%s0"]}' % one.encode(),
        "number_id": b'{"v":1,"event_ids":[1]}',
        "list_not_array": b'{"v":1,"event_ids":"%s"}' % one.encode(),
        "duplicate_key": b'{"v":1,"event_ids":["%s"],"event_ids":["%s"]}'
        % (one.encode(), two.encode()),
        "array": b'[{"v":1,"event_ids":["%s"]}]' % one.encode(),
        "not_json": b"acks",
        "trailing_newline_id": b'{"v":1,"event_ids":["%s\\n"]}' % one.encode(),
    }
    cases = []
    for name, data in inputs.items():
        try:
            ack = parse_acks(data)
        except ProtocolError:
            cases.append({"name": name, "input": base64.b64encode(data).decode(), "valid": False})
            continue
        cases.append(
            {
                "name": name,
                "input": base64.b64encode(data).decode(),
                "valid": True,
                "event_ids": list(ack.event_ids),
            }
        )
    return {"format": FORMAT, "cases": cases}


def json_text() -> str:
    return json.dumps(json_document(), indent=1) + "\n"


def new_keys() -> Keys:
    return Keys(director=generate_director_key(), other=generate_director_key())


# --- update scenarios ------------------------------------------------------------------

UPDATE_LENGTH = 150_000  # more than two of the C client's 64 KiB download checkpoints


def artifact(seed: int, length: int = UPDATE_LENGTH) -> bytes:
    """The bytes the C tests' fake HTTP server serves for `?seed=<seed>&len=<length>`:
    byte i is (i * (2 * seed + 1) + seed) mod 251."""
    return bytes((i * (2 * seed + 1) + seed) % 251 for i in range(length))


def update_document(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """Signed desired states for the C agent's update tests: an install, an update, and
    updates whose download is wrong (other bytes, too few, too many)."""

    def entry(
        version: str, counter: int, seed: int, served_seed: int, served_len: int
    ) -> ModelTarget:
        return replace(
            target(
                version=version,
                release_counter=counter,
                sha256=hashlib.sha256(artifact(seed)).hexdigest(),
                length=UPDATE_LENGTH,
            ),
            url=f"https://artifacts.example.com/kws?seed={served_seed}&len={served_len}",
        )

    cases = {
        "install": (17, entry("1.4.0", 14, 1, 1, UPDATE_LENGTH)),
        "update": (18, entry("1.5.0", 15, 2, 2, UPDATE_LENGTH)),
        "wrong_bytes": (19, entry("1.6.0", 16, 3, 4, UPDATE_LENGTH)),
        "truncated": (20, entry("1.6.0", 16, 3, 3, UPDATE_LENGTH - 1000)),
        "overlong": (21, entry("1.6.0", 16, 3, 3, UPDATE_LENGTH + 1000)),
        "update_again": (22, entry("1.5.0", 15, 2, 2, UPDATE_LENGTH)),
    }
    envelopes = {
        name: b64(sign_envelope(desired(seq=seq, models=(model,)).to_json(), key))
        for name, (seq, model) in cases.items()
    }
    return {
        "format": FORMAT,
        "about": "Generated by tests/vectors/generate.py; the C agent's update tests.",
        "director_key": public_key_to_pem(key.public_key()).decode(),
        "device_id": DEVICE,
        "hardware": HARDWARE,
        "now": format_timestamp(NOW),
        "envelopes": envelopes,
    }


def write_corpus(doc: dict[str, Any], json_doc: dict[str, Any]) -> None:
    """Seeds for the fuzz targets: envelopes, their payloads, the JSON cases, and the
    pinned key the envelope target verifies against (a public key)."""
    seeds: dict[str, dict[str, bytes]] = {"envelope": {}, "desired": {}, "json": {}, "acks": {}}
    for case in acks_document()["cases"]:
        seeds["acks"][case["name"]] = base64.b64decode(case["input"])
    for vector in doc["vectors"]:
        envelope = base64.b64decode(vector["envelope"])
        if len(envelope) <= C_MAX_ENVELOPE:
            seeds["envelope"][vector["name"]] = envelope
        try:
            text = json.loads(envelope)["payload"]
            altchars = b"-_" if "-" in text or "_" in text else None
            seeds["desired"][vector["name"]] = base64.b64decode(text, altchars=altchars)
        except (ValueError, KeyError, TypeError):
            continue
    for case in json_doc["cases"]:
        data = base64.b64decode(case["input"])
        if len(data) <= C_MAX_ENVELOPE:
            seeds["json"][case["name"]] = data
    for target, files in seeds.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, data in files.items():
            (folder / name).write_bytes(data)
    (CORPUS / "director.pem").write_text(doc["director_key"])


def main() -> int:
    doc = document(new_keys())
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=True) + "\n")
    JSON_OUT.write_text(json_text())
    CODES_OUT.write_text(codes_text())
    ACKS_OUT.write_text(json.dumps(acks_document(), indent=1) + "\n")
    UPDATE_OUT.write_text(json.dumps(update_document(generate_director_key()), indent=1) + "\n")
    write_corpus(doc, json_document())
    print(f"wrote {OUT}, {JSON_OUT} and {CORPUS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
