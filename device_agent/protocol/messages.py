"""Typed payloads of docs/protocol.md (Payloads) and their strict JSON parsers.

Every payload is a UTF-8 JSON object with `"v": 1`, at most 64 KiB. Parsers accept
exactly the documented keys (a nullable field is present as `null`, never absent)
and raise ProtocolError: `payload_too_large` when oversize, `invalid_target_path`
for a bad model path, `malformed` for everything else. Instances validate themselves
on construction, so a message built in code cannot be encoded if it would not parse.
"""

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from functools import lru_cache
from typing import Any, NamedTuple, NoReturn, Self, TypeVar, cast

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError, brief
from device_agent.protocol.identifiers import (
    FILENAME,
    HARDWARE,
    MODEL_NAME,
    REPORTED_ROLLOUT_ID,
    VERSION,
)
from device_agent.protocol.topics import is_valid_device_id

PROTOCOL_VERSION = 1
MAX_PAYLOAD_BYTES = 65536
# Integers must survive a double round trip: the ESP32 stub's JSON parser stores
# numbers as doubles, which are exact only up to 2**53 - 1.
MAX_SAFE_INT = 2**53 - 1
MAX_MODELS = 32
MAX_SAMPLES = 500  # a minimal sample is ~100 bytes, so this binds before 64 KiB
MAX_METRICS = 32
MAX_DETAIL_CHARS = 1024
MAX_VERSION_CHARS = 64  # fixed-size buffers in the C stub
MAX_URL_CHARS = 4096  # presigned S3 URLs with session tokens exceed 2 KiB

# Explicit ASCII classes throughout: `\d` and str.isdigit() accept non-ASCII digits.
# Identifiers have one rule each, shared with the control plane (identifiers.py).
MODEL_NAME_RE = MODEL_NAME.regex
HARDWARE_RE = HARDWARE.regex
FILENAME_RE = FILENAME.regex
TOKEN_RE = REPORTED_ROLLOUT_ID.regex  # rollout id, arm
METRIC_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
EVENT_ID_RE = re.compile(r"[0-9a-f]{32}")
MAX_ACK_IDS = 500  # 500 ids of 35 bytes: well under 64 KiB
SEMVER_RE = VERSION.regex
_TIMESTAMP_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z"
)
# C0 controls, DEL and lone surrogates (json.loads turns "\ud800" into one; it cannot
# be re-encoded as UTF-8).
_FORBIDDEN_TEXT_RE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")

_E = TypeVar("_E", bound=Enum)


class Phase(StrEnum):
    """Update phases reported in `events`, also the per-model status in `state`."""

    ACCEPTED = "accepted"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    STAGED = "staged"
    SWAPPED = "swapped"
    TRIAL = "trial"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"


# Phases that mean "it did not work": the event must say why.
FAILURE_PHASES = frozenset({Phase.FAILED, Phase.REJECTED})


class Slot(StrEnum):
    """The two install slots per model (docs/architecture.md, "The agent on a device")."""

    A = "a"
    B = "b"


class Presence(StrEnum):
    """The `status` channel's values."""

    ONLINE = "online"
    OFFLINE = "offline"


# --- JSON --------------------------------------------------------------------------


def _fail(detail: str, code: ErrorCode = ErrorCode.MALFORMED) -> NoReturn:
    raise ProtocolError(code, detail)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # parse_constant only sees the NaN/Infinity literals; 1e999 arrives here as inf.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} out of range")
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last duplicate, cJSON the first: refuse the ambiguity.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


# json.loads() with arguments builds a decoder per call; this one is shared, like the
# json module's own default decoder (it keeps no state between calls).
_STRICT_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
)


# The same without the per-float check, for a caller that checks every float it keeps:
# telemetry (TelemetrySample and its fast path refuse a non-finite metric). A Python call
# per number was a tenth of the bridge's time on telemetry batches of 20 numbers.
_FLOATS_UNCHECKED_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, object_pairs_hook=_unique_keys
)


def loads_json(
    data: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES, finite_floats: bool = True
) -> dict[str, object]:
    """Decode one strict JSON object: UTF-8, no NaN/Infinity, no duplicate keys.

    ``finite_floats=False`` leaves a number too large for a float (``1e999``) as ``inf``
    for the caller to refuse; the NaN and Infinity literals are refused either way.
    """
    if len(data) > max_bytes:
        _fail(f"{len(data)} bytes > {max_bytes}", ErrorCode.PAYLOAD_TOO_LARGE)
    try:
        text = data.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads() says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        decoder = _STRICT_DECODER if finite_floats else _FLOATS_UNCHECKED_DECODER
        obj = decoder.decode(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(ErrorCode.MALFORMED, f"not strict UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        _fail("payload is not a JSON object")
    return obj


def dumps_json(obj: Mapping[str, object], *, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Compact UTF-8 JSON; refuses (payload_too_large) what a receiver would refuse."""
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(data) > max_bytes:
        _fail(f"{len(data)} bytes > {max_bytes}", ErrorCode.PAYLOAD_TOO_LARGE)
    return data


# --- field checks ------------------------------------------------------------------


def _int(value: object, what: str, *, low: int = 0, high: int = MAX_SAFE_INT) -> None:
    # type() rather than isinstance(): True is an int to Python but not to us.
    if type(value) is not int or not low <= value <= high:
        _fail(f"{what} must be an integer in [{low}, {high}]")


def _match(value: object, what: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        _fail(f"{what} must match {pattern.pattern}")


def _version(value: object, what: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_VERSION_CHARS:
        _fail(f"{what} must be a semver string of at most {MAX_VERSION_CHARS} characters")
    _match(value, what, SEMVER_RE)


def _optional_match(value: object, what: str, pattern: re.Pattern[str]) -> None:
    if value is not None:
        _match(value, what, pattern)


def _text(value: object, what: str, *, max_chars: int, allow_empty: bool = False) -> None:
    if (
        not isinstance(value, str)
        or len(value) > max_chars
        or (not value and not allow_empty)
        or _FORBIDDEN_TEXT_RE.search(value)
    ):
        _fail(f"{what} must be printable text of at most {max_chars} characters")


def _url(value: object, what: str) -> None:
    _text(value, what, max_chars=MAX_URL_CHARS)
    if not isinstance(value, str):  # for mypy: _text already refused it
        _fail(f"{what} must be a string")
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/") or " " in value:
        _fail(f"{what} must be an absolute http(s) URL")


def _utc(value: object, what: str) -> None:
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        _fail(f"{what} must be a UTC datetime")


def _tuple_of(value: object, what: str, kind: type, max_items: int) -> None:
    if not isinstance(value, tuple) or len(value) > max_items:
        _fail(f"{what} must be a tuple of at most {max_items} items")
    if not all(isinstance(item, kind) for item in value):
        _fail(f"{what} items must be {kind.__name__}")


def _unique_names(items: tuple[Any, ...], what: str) -> None:
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        _fail(f"{what} lists a model name twice")


def parse_timestamp(value: object) -> datetime:
    """Parse RFC 3339 UTC `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` into an aware datetime."""
    if not isinstance(value, str) or (m := _TIMESTAMP_RE.fullmatch(value)) is None:
        _fail(f"timestamp {brief(value)} is not RFC 3339 UTC (...Z)")
    year, month, day, hour, minute, second = map(int, m.groups()[:6])
    microsecond = int((m.group(7) or "0").ljust(6, "0"))
    try:
        return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)
    except ValueError:
        _fail(f"timestamp {brief(value)} is not a real date and time")


def format_timestamp(value: datetime) -> str:
    """Format a UTC datetime as RFC 3339 with `Z` (microseconds only when non-zero)."""
    _utc(value, "timestamp")
    # isoformat() writes `.ffffff` only when microsecond is non-zero, and four-digit years
    # (strftime's %Y does not pad years before 1000), and it is cheaper than strftime.
    return f"{value.replace(tzinfo=None).isoformat()}Z"


class TargetPath(NamedTuple):
    """The parts of `models/<name>/<version>/<hardware>/<filename>`."""

    name: str
    version: str
    hardware: str
    filename: str


def split_target_path(path: object) -> TargetPath:
    """Split `models/<name>/<version>/<hardware>/<filename>`; else invalid_target_path.

    The agent builds local file names from these parts, so nothing that could escape
    a directory (absolute, `..`, backslash, empty segment) gets through.
    """
    if not isinstance(path, str):
        _fail("path must be a string")
    code = ErrorCode.INVALID_TARGET_PATH
    if path.startswith("/") or "\\" in path or len(path) > 512:
        _fail(f"path {brief(path)} is absolute, has a backslash or is too long", code)
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        _fail(f"path {brief(path)} has an empty, '.' or '..' segment", code)
    if len(parts) != 5 or parts[0] != "models":
        _fail(f"path {brief(path)} is not models/<name>/<version>/<hardware>/<file>", code)
    target = TargetPath(*parts[1:])
    checks = [
        (target.name, MODEL_NAME_RE),
        (target.version, SEMVER_RE),
        (target.hardware, HARDWARE_RE),
        (target.filename, FILENAME_RE),
    ]
    if any(pattern.fullmatch(part) is None for part, pattern in checks):
        _fail(f"path {brief(path)} has a segment outside the allowed characters", code)
    return target


# --- decoding helpers --------------------------------------------------------------


# A dataclass's field names, once per class: every message decoded and encoded asks, and
# dataclasses.fields() builds its tuple anew each time.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _members(obj: object, cls: type, what: str, *, top_level: bool) -> dict[str, Any]:
    """The members of a JSON object that must have exactly the dataclass's fields."""
    if not isinstance(obj, dict):
        _fail(f"{what} must be a JSON object")
    expected = set(_field_names(cls))
    if top_level:
        version = obj.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:
            _fail(f"{what}: unsupported protocol version {brief(version)}")
        expected.add("v")
    if set(obj) != expected:
        missing, unknown = sorted(expected - set(obj)), sorted(set(obj) - expected)
        _fail(f"{what}: missing {missing}, unknown {unknown}")
    return {key: value for key, value in obj.items() if key != "v"}


def _array(value: object, what: str, max_items: int) -> list[object]:
    if not isinstance(value, list) or len(value) > max_items:
        _fail(f"{what} must be an array of at most {max_items} items")
    return value


def _enum(kind: type[_E], value: object, what: str) -> _E:
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    _fail(f"{what} {brief(value)} is not one of {[m.value for m in kind]}")


# Values that are their own JSON (exact types: a StrEnum member goes through _jsonable).
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _fields_dict(value: Any) -> dict[str, object]:
    # The director encodes one DesiredState per device: no dataclasses.fields() walk and no
    # generic dispatch for the plain values that make up most fields.
    out: dict[str, object] = {}
    for name in _field_names(type(value)):
        item = getattr(value, name)
        out[name] = item if type(item) in _PLAIN else _jsonable(item)
    return out


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if is_dataclass(value) and not isinstance(value, type):
        return _fields_dict(value)
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    return value  # str (including StrEnum), int, float, None


class _Payload:
    """to_dict/to_json for the top-level messages."""

    __slots__ = ()

    def to_dict(self) -> dict[str, object]:
        """The JSON object, `"v": 1` first."""
        return {"v": PROTOCOL_VERSION, **_fields_dict(self)}

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, at most MAX_PAYLOAD_BYTES."""
        return dumps_json(self.to_dict())


# --- desired -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelTarget:
    """One model the director wants on the device, as matched against its TUF target."""

    name: str
    path: str
    version: str
    release_counter: int
    hardware: str
    sha256: str
    length: int
    url: str
    rollout_id: str | None
    arm: str | None

    def __post_init__(self) -> None:
        _match(self.name, "models[].name", MODEL_NAME_RE)
        _version(self.version, "models[].version")
        _int(self.release_counter, "models[].release_counter")
        _match(self.hardware, "models[].hardware", HARDWARE_RE)
        _match(self.sha256, "models[].sha256", SHA256_RE)
        _int(self.length, "models[].length")
        _url(self.url, "models[].url")
        _optional_match(self.rollout_id, "models[].rollout_id", TOKEN_RE)
        _optional_match(self.arm, "models[].arm", TOKEN_RE)
        target = split_target_path(self.path)
        if target[:3] != (self.name, self.version, self.hardware):
            _fail(
                f"path {brief(self.path)} disagrees with name/version/hardware",
                ErrorCode.INVALID_TARGET_PATH,
            )

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        """Build from a decoded JSON object; raises ProtocolError."""
        return cls(**_members(obj, cls, "models[]", top_level=False))


# DesiredState.to_json's parts; the keys in to_dict's order, with dumps_json's separators.
_DESIRED_JSON = b'{"v":%d,"device_id":%b,"seq":%d,"issued_at":%b,"expires_at":%b,"models":%b}'


def _json_text(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


@lru_cache(maxsize=64)
def _json_timestamp(value: datetime) -> bytes:
    # Only for validated (UTC) fields: equal datetimes in other offsets share a cache entry.
    return _json_text(format_timestamp(value))


@lru_cache(maxsize=256)
def _json_models(models: tuple["ModelTarget", ...]) -> bytes:
    data = [_fields_dict(model) for model in models]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True, kw_only=True, slots=True)
class DesiredState(_Payload):
    """The director's payload: every model the device should run (docs/protocol.md, `desired`)."""

    device_id: str
    seq: int
    issued_at: datetime
    expires_at: datetime
    models: tuple[ModelTarget, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not is_valid_device_id(self.device_id):
            _fail(f"invalid device_id {brief(self.device_id)}")
        _int(self.seq, "seq")
        _utc(self.issued_at, "issued_at")
        _utc(self.expires_at, "expires_at")
        if self.expires_at <= self.issued_at:
            _fail("expires_at must be after issued_at")
        _tuple_of(self.models, "models", ModelTarget, MAX_MODELS)
        _unique_names(self.models, "models")

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, at most MAX_PAYLOAD_BYTES: dumps_json(self.to_dict()).

        From cached parts: the director encodes one per device, and those of a rollout
        differ only in device id and seq (same models, same issue and expiry times).
        """
        data = _DESIRED_JSON % (
            PROTOCOL_VERSION,
            # Validated against DEVICE_ID_RE: nothing in it needs escaping.
            b'"%b"' % self.device_id.encode(),
            self.seq,
            _json_timestamp(self.issued_at),
            _json_timestamp(self.expires_at),
            _json_models(self.models),
        )
        if len(data) > MAX_PAYLOAD_BYTES:
            _fail(f"{len(data)} bytes > {MAX_PAYLOAD_BYTES}", ErrorCode.PAYLOAD_TOO_LARGE)
        return data

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        """Build from a decoded JSON object; raises ProtocolError."""
        members = _members(obj, cls, "desired", top_level=True)
        members["issued_at"] = parse_timestamp(members["issued_at"])
        members["expires_at"] = parse_timestamp(members["expires_at"])
        models = _array(members["models"], "models", MAX_MODELS)
        members["models"] = tuple(ModelTarget.from_dict(m) for m in models)
        return cls(**members)


# --- state -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelState:
    """What one model slot on the device holds and how its last update went."""

    name: str
    version: str
    release_counter: int
    slot: Slot
    status: Phase

    def __post_init__(self) -> None:
        _match(self.name, "models[].name", MODEL_NAME_RE)
        _version(self.version, "models[].version")
        _int(self.release_counter, "models[].release_counter")
        if not isinstance(self.slot, Slot) or not isinstance(self.status, Phase):
            _fail("models[].slot must be a Slot and status a Phase")

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        """Build from a decoded JSON object; raises ProtocolError."""
        members = _members(obj, cls, "models[]", top_level=False)
        members["slot"] = _enum(Slot, members["slot"], "slot")
        members["status"] = _enum(Phase, members["status"], "status")
        return cls(**members)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportedState(_Payload):
    """The device's retained report on `state`; the device id is in the topic."""

    agent_version: str
    hardware: str
    models: tuple[ModelState, ...]
    last_seq: int

    def __post_init__(self) -> None:
        _text(self.agent_version, "agent_version", max_chars=64)
        _match(self.hardware, "hardware", HARDWARE_RE)
        _tuple_of(self.models, "models", ModelState, MAX_MODELS)
        _unique_names(self.models, "models")
        _int(self.last_seq, "last_seq")

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        """Build from a decoded JSON object; raises ProtocolError."""
        members = _members(obj, cls, "state", top_level=True)
        models = _array(members["models"], "models", MAX_MODELS)
        members["models"] = tuple(ModelState.from_dict(m) for m in models)
        return cls(**members)


# --- events ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class UpdateEvent(_Payload):
    """Progress of the update started by desired `seq`; `code` says why it failed.

    `event_id` (32 lowercase hex digits, random) names the event for the server's `acks`:
    the agent sends the same event again, id and all, until the server confirms it. It
    is the one optional key of the protocol, absent (None) in events of agents that do
    not wait for confirmations; such an event is encoded without it.
    """

    seq: int
    rollout_id: str | None
    model: str | None  # None when the whole desired state was refused
    phase: Phase
    progress: int | None  # percent, while downloading
    code: ErrorCode | None
    detail: str
    ts: datetime
    event_id: str | None = None

    def __post_init__(self) -> None:
        _int(self.seq, "seq")
        _optional_match(self.event_id, "event_id", EVENT_ID_RE)
        _optional_match(self.rollout_id, "rollout_id", TOKEN_RE)
        _optional_match(self.model, "model", MODEL_NAME_RE)
        if not isinstance(self.phase, Phase):
            _fail("phase must be a Phase")
        if self.progress is not None:
            _int(self.progress, "progress", high=100)
        if self.code is not None and not isinstance(self.code, ErrorCode):
            _fail("code must be an ErrorCode")
        if self.phase in FAILURE_PHASES and self.code is None:
            _fail(f"phase {self.phase} needs a code")
        _text(self.detail, "detail", max_chars=MAX_DETAIL_CHARS, allow_empty=True)
        _utc(self.ts, "ts")

    def to_dict(self) -> dict[str, object]:
        data = _Payload.to_dict(self)  # slots=True: no zero-argument super()
        if self.event_id is None:
            del data["event_id"]  # the form agents without confirmations send
        return data

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        """Build from a decoded JSON object; raises ProtocolError."""
        if isinstance(obj, dict) and "event_id" not in obj:
            obj = {**obj, "event_id": None}
        members = _members(obj, cls, "event", top_level=True)
        members["phase"] = _enum(Phase, members["phase"], "phase")
        if members["code"] is not None:
            members["code"] = _enum(ErrorCode, members["code"], "code")
        members["ts"] = parse_timestamp(members["ts"])
        return cls(**members)


@dataclass(frozen=True, kw_only=True, slots=True)
class EventsAck(_Payload):
    """On `acks` (server -> device): these events and telemetry messages of the device
    are stored.

    The bridge sends it after the batch's transaction commits, for new messages and
    repeats alike, so an agent that missed one gets it again when it sends again. Either
    list may be absent (empty here) but not both; a present one is not empty. The bridge
    writes `batch_ids` only to agents that sent a `batch_id`, so an agent that knows only
    `event_ids` never gets it.
    """

    event_ids: tuple[str, ...] = ()
    batch_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _tuple_of(self.event_ids, "event_ids", str, MAX_ACK_IDS)
        _tuple_of(self.batch_ids, "batch_ids", str, MAX_ACK_IDS)
        if not self.event_ids and not self.batch_ids:
            _fail("an ack must name at least one event_id or batch_id")
        for event_id in self.event_ids:
            _match(event_id, "event_ids[]", EVENT_ID_RE)
        for batch_id in self.batch_ids:
            _match(batch_id, "batch_ids[]", EVENT_ID_RE)

    def to_dict(self) -> dict[str, object]:
        data = _Payload.to_dict(self)  # slots=True: no zero-argument super()
        for key in ("event_ids", "batch_ids"):
            if not data[key]:
                del data[key]  # absent, never empty: what agents without it parse
        return data

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        """Build from a decoded JSON object; raises ProtocolError."""
        if isinstance(obj, dict):
            for key in ("event_ids", "batch_ids"):
                if key in obj and obj[key] == []:
                    _fail(f"{key} must not be empty when present")
            obj = {"event_ids": [], "batch_ids": [], **obj}
        members = _members(obj, cls, "acks", top_level=True)
        event_ids = _array(members["event_ids"], "event_ids", MAX_ACK_IDS)
        batch_ids = _array(members["batch_ids"], "batch_ids", MAX_ACK_IDS)
        return cls(
            event_ids=tuple(cast(list[str], event_ids)),
            batch_ids=tuple(cast(list[str], batch_ids)),
        )


# --- telemetry ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TelemetrySample:
    """Model metrics, tagged with the rollout and arm last given in `desired`."""

    model: str
    version: str
    rollout_id: str | None
    arm: str | None
    metrics: Mapping[str, float]
    ts: datetime

    def __post_init__(self) -> None:
        _match(self.model, "samples[].model", MODEL_NAME_RE)
        _version(self.version, "samples[].version")
        _optional_match(self.rollout_id, "samples[].rollout_id", TOKEN_RE)
        _optional_match(self.arm, "samples[].arm", TOKEN_RE)
        if not isinstance(self.metrics, Mapping) or not 0 < len(self.metrics) <= MAX_METRICS:
            _fail(f"samples[].metrics must map 1 to {MAX_METRICS} names to numbers")
        for name, value in self.metrics.items():
            _match(name, "metric name", METRIC_RE)
            # Bound ints before float() so a 300-digit integer is refused, not overflowed.
            if type(value) is int and abs(value) <= MAX_SAFE_INT:
                continue
            if type(value) is not float or not math.isfinite(value):
                _fail(f"metric {name} must be a finite number")
        # Copy (the caller's dict stays theirs) and make every value a float.
        object.__setattr__(self, "metrics", {k: float(v) for k, v in self.metrics.items()})
        _utc(self.ts, "samples[].ts")

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        """Build from a decoded JSON object; raises ProtocolError."""
        members = _members(obj, cls, "samples[]", top_level=False)
        members["ts"] = parse_timestamp(members["ts"])
        return cls(**members)


@dataclass(frozen=True, kw_only=True, slots=True)
class TelemetryBatch(_Payload):
    """A batch of samples on `telemetry`.

    `batch_id` (32 lowercase hex digits, random, optional like an event's `event_id`)
    asks the server to confirm the message on `acks`: the agent sends the same payload
    again until it does. Absent (None) in batches of agents that do not wait for it.
    """

    samples: tuple[TelemetrySample, ...]
    batch_id: str | None = None

    def __post_init__(self) -> None:
        _optional_match(self.batch_id, "batch_id", EVENT_ID_RE)
        _tuple_of(self.samples, "samples", TelemetrySample, MAX_SAMPLES)
        if not self.samples:
            _fail("samples must not be empty")

    def to_dict(self) -> dict[str, object]:
        data = _Payload.to_dict(self)  # slots=True: no zero-argument super()
        if self.batch_id is None:
            del data["batch_id"]
        return data

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        """Build from a decoded JSON object; raises ProtocolError."""
        if cls is TelemetryBatch:
            fast = _telemetry_fast(obj)
            if fast is not None:
                return cast(Self, fast)
        if isinstance(obj, dict) and "batch_id" not in obj:
            obj = {**obj, "batch_id": None}
        members = _members(obj, cls, "telemetry", top_level=True)
        samples = _array(members["samples"], "samples", MAX_SAMPLES)
        return cls(
            samples=tuple(TelemetrySample.from_dict(s) for s in samples),
            batch_id=members["batch_id"],
        )


# The bridge parses every telemetry message a fleet sends: _telemetry_fast checks the
# usual shape with plain type and key checks, and remembers the values it has already
# seen pass the full checks (a fleet repeats its few model/version/rollout/arm tags,
# metric names and second-resolution timestamps), bounded: whoever floods new values
# only empties these.
_FAST_CACHE_MAX = 4096
_BATCH_KEYS = frozenset({"v", "samples"})
_BATCH_KEYS_WITH_ID = frozenset({"v", "samples", "batch_id"})
_SAMPLE_KEYS = frozenset(f.name for f in fields(TelemetrySample))
_valid_tags: set[tuple[str, str, str | None, str | None]] = set()
_valid_metric_names: set[str] = set()
_timestamps: dict[str, datetime] = {}


def _tags_valid(model: str, version: str, rollout_id: str | None, arm: str | None) -> bool:
    return (
        MODEL_NAME_RE.fullmatch(model) is not None
        and len(version) <= MAX_VERSION_CHARS
        and SEMVER_RE.fullmatch(version) is not None
        and (rollout_id is None or TOKEN_RE.fullmatch(rollout_id) is not None)
        and (arm is None or TOKEN_RE.fullmatch(arm) is not None)
    )


def _telemetry_fast(obj: object) -> TelemetryBatch | None:
    """TelemetryBatch.from_dict for the usual shape, or None for the generic path.

    Applies every check of the generic path (TelemetryBatch/TelemetrySample.from_dict and
    their __post_init__) and builds equal objects. Anything that fails or is unusual (a
    subclass of str or dict, say) returns None, and the generic path then accepts it or
    raises its error; so errors, codes and details are the generic path's.
    """
    if type(obj) is not dict:
        return None
    keys = obj.keys()
    batch_id = None
    if keys == _BATCH_KEYS_WITH_ID:
        batch_id = obj["batch_id"]
        if type(batch_id) is not str or EVENT_ID_RE.fullmatch(batch_id) is None:
            return None
    elif keys != _BATCH_KEYS:
        return None
    v, items = obj["v"], obj["samples"]
    if type(v) is not int or v != PROTOCOL_VERSION or type(items) is not list:
        return None
    if not 0 < len(items) <= MAX_SAMPLES:
        return None
    new, put = object.__new__, object.__setattr__
    samples = []
    for item in items:
        if type(item) is not dict or item.keys() != _SAMPLE_KEYS:
            return None
        model, version, rollout_id, arm = (
            item["model"],
            item["version"],
            item["rollout_id"],
            item["arm"],
        )
        if (
            type(model) is not str
            or type(version) is not str
            or (rollout_id is not None and type(rollout_id) is not str)
            or (arm is not None and type(arm) is not str)
        ):
            return None
        tags = (model, version, rollout_id, arm)
        if tags not in _valid_tags:
            if not _tags_valid(*tags):
                return None
            _remember(_valid_tags, tags)
        values = item["metrics"]
        if type(values) is not dict or not 0 < len(values) <= MAX_METRICS:
            return None
        metrics: dict[str, float] = {}
        for name, value in values.items():
            if name not in _valid_metric_names:
                if type(name) is not str or METRIC_RE.fullmatch(name) is None:
                    return None
                _remember(_valid_metric_names, name)
            kind = type(value)
            if kind is float:
                if not math.isfinite(value):
                    return None
                metrics[name] = value
            elif kind is int and abs(value) <= MAX_SAFE_INT:
                metrics[name] = float(value)
            else:
                return None
        text = item["ts"]
        if type(text) is not str:
            return None
        ts = _timestamps.get(text)
        if ts is None:
            try:
                ts = parse_timestamp(text)
            except ProtocolError:
                return None
            if len(_timestamps) >= _FAST_CACHE_MAX:
                _timestamps.clear()
            _timestamps[text] = ts
        sample = new(TelemetrySample)
        put(sample, "model", model)
        put(sample, "version", version)
        put(sample, "rollout_id", rollout_id)
        put(sample, "arm", arm)
        put(sample, "metrics", metrics)
        put(sample, "ts", ts)
        samples.append(sample)
    batch = new(TelemetryBatch)
    put(batch, "samples", tuple(samples))
    put(batch, "batch_id", batch_id)
    return batch


def _remember(seen: set[Any], value: object) -> None:
    if len(seen) >= _FAST_CACHE_MAX:
        seen.clear()
    seen.add(value)


# --- status ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceStatus(_Payload):
    """`{"v": 1, "status": "online"}`; the broker publishes the `offline` one as LWT."""

    status: Presence

    def __post_init__(self) -> None:
        if not isinstance(self.status, Presence):
            _fail("status must be a Presence")

    @classmethod
    def from_dict(cls, obj: object) -> Self:
        """Build from a decoded JSON object; raises ProtocolError."""
        members = _members(obj, cls, "status", top_level=True)
        return cls(status=_enum(Presence, members["status"], "status"))


# --- stored states -----------------------------------------------------------------


class StoredModel(NamedTuple):
    """One ``models`` entry of a reported or desired state stored as JSON (the control
    plane's database); the fields a state of that kind lacks read as None."""

    name: str
    version: str | None
    release_counter: int | None
    path: str | None


def stored_models(obj: object) -> tuple[StoredModel, ...]:
    """The ``models`` of a stored reported or desired state, in their order.

    What is stored was written by ``to_dict()`` of a parsed message, but a device that never
    reported has ``{}`` and an old row may predate a field, so this never raises: no
    ``models`` array reads as none, an entry without a string ``name`` is left out, and a
    field that is missing or of another type reads as None. Use ``from_dict`` where the
    whole message must be valid.
    """
    entries = obj.get("models") if isinstance(obj, dict) else None
    if not isinstance(entries, list):
        return ()
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        if not isinstance(name, str):
            continue
        version = entry.get("version")
        counter = entry.get("release_counter")
        path = entry.get("path")
        out.append(
            StoredModel(
                name,
                version if isinstance(version, str) else None,
                counter if isinstance(counter, int) else None,
                path if isinstance(path, str) else None,
            )
        )
    return tuple(out)


# --- parsers -----------------------------------------------------------------------


def parse_desired(data: bytes) -> DesiredState:
    """Parse the payload of a verified `desired` envelope."""
    return DesiredState.from_dict(loads_json(data))


def parse_state(data: bytes) -> ReportedState:
    """Parse a `state` payload."""
    return ReportedState.from_dict(loads_json(data))


def parse_event(data: bytes) -> UpdateEvent:
    """Parse an `events` payload."""
    return UpdateEvent.from_dict(loads_json(data))


def parse_acks(data: bytes) -> EventsAck:
    """Parse an `acks` payload."""
    return EventsAck.from_dict(loads_json(data))


def parse_telemetry(data: bytes) -> TelemetryBatch:
    """Parse a `telemetry` payload."""
    return TelemetryBatch.from_dict(loads_json(data, finite_floats=False))


def parse_status(data: bytes) -> DeviceStatus:
    """Parse a `status` payload."""
    return DeviceStatus.from_dict(loads_json(data))
