"""Telemetry from the device's applications, deciding only (the IO is in metrics_server.py).

Applications hand the agent one sample per datagram (device_agent/metrics_client.py):

    {"model": "kws", "metrics": {"latency_ms": 12.5, "confidence": 0.93}, "ts": 1767225600.5}

`ts` is optional (unix seconds, or RFC 3339 UTC `...Z`; default: when the agent read
it). This module judges such a datagram (`sample_from_datagram`), tags the sample with
what the agent knows of that model (`tags_from_store`: the committed version and the
rollout and arm it runs under), batches samples per model (`Batcher`: a batch is due
at `max_samples` samples or `max_age_s` after its first sample) into `telemetry`
payloads of at most 64 KiB, each with a random `batch_id` when the server is to confirm
it, holds the encoded payloads that wait for the broker (`Backlog`, bounded in bytes,
oldest dropped first) and those sent but not yet confirmed on `acks` (`Unconfirmed`,
bounded in number and bytes, oldest dropped first; each sent again, the same bytes, 5 s
after the last try doubling to 60 s). No clock, no socket, no MQTT here:
device_agent/metrics_server.py does the IO and passes the time and the ids in. Every
refusal and drop is counted.
"""

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    MAX_METRICS,
    MAX_PAYLOAD_BYTES,
    MAX_SAFE_INT,
    MAX_SAMPLES,
    METRIC_RE,
    MODEL_NAME_RE,
    TelemetryBatch,
    TelemetrySample,
    loads_json,
    parse_timestamp,
)
from device_agent.store import AgentStore

# 32 metrics with 64-character names and 24-character numbers fit in 3.5 KiB.
MAX_DATAGRAM_BYTES = 8192
# How far an application's own timestamp may lie from the agent's clock.
MAX_SAMPLE_AGE = timedelta(hours=1)
MAX_SAMPLE_FUTURE = timedelta(seconds=60)
_DATAGRAM_KEYS = frozenset({"model", "metrics", "ts", "v"})


class Refusal(StrEnum):
    """Why a datagram from an application was dropped (the counters' keys)."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    UNKNOWN_MODEL = "unknown_model"
    BAD_METRIC_NAME = "bad_metric_name"
    BAD_METRIC_VALUE = "bad_metric_value"
    TOO_MANY_METRICS = "too_many_metrics"
    BAD_TIMESTAMP = "bad_timestamp"


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelTags:
    """What a sample of one installed model is tagged with."""

    version: str
    rollout_id: str | None
    arm: str | None


def tags_from_store(store: AgentStore) -> dict[str, ModelTags]:
    """Per installed model: its committed version and the rollout and arm it runs under
    (as last given in `desired` for these bytes, docs/protocol.md). An update still running,
    or one that failed, changes nothing here: an arm's statistics never include samples
    of another version."""
    return {
        name: ModelTags(
            version=record.installed.version,
            rollout_id=record.installed.rollout_id,
            arm=record.installed.arm,
        )
        for name, record in store.models.items()
        if record.installed is not None
    }


# --- one datagram ------------------------------------------------------------------


def _metric_value(value: object) -> bool:
    # type() rather than isinstance(): True is an int to Python but not a number here.
    if type(value) is int:
        return abs(value) <= MAX_SAFE_INT
    return type(value) is float and math.isfinite(value)


def _timestamp(value: object, now: datetime) -> datetime | None:
    if value is None:
        return now
    if type(value) is int or type(value) is float:
        if not math.isfinite(value) or not 0 < value < 2**34:
            return None
        ts = datetime.fromtimestamp(value, UTC)
    else:
        try:
            ts = parse_timestamp(value)
        except ProtocolError:
            return None
    if not now - MAX_SAMPLE_AGE <= ts <= now + MAX_SAMPLE_FUTURE:
        return None
    return ts


def sample_from_datagram(
    data: bytes, *, tags: Mapping[str, ModelTags], now: datetime
) -> TelemetrySample | Refusal:
    """Judge one datagram from an application: the tagged sample, or why it is refused."""
    if len(data) > MAX_DATAGRAM_BYTES:
        return Refusal.TOO_LARGE
    try:
        obj = loads_json(data, max_bytes=MAX_DATAGRAM_BYTES)
    except ProtocolError:
        return Refusal.MALFORMED
    version = obj.get("v", 1)
    if set(obj) - _DATAGRAM_KEYS or type(version) is not int or version != 1:
        return Refusal.MALFORMED
    model, metrics = obj.get("model"), obj.get("metrics")
    if not isinstance(model, str) or not isinstance(metrics, dict) or not metrics:
        return Refusal.MALFORMED
    if MODEL_NAME_RE.fullmatch(model) is None or model not in tags:
        return Refusal.UNKNOWN_MODEL
    if len(metrics) > MAX_METRICS:
        return Refusal.TOO_MANY_METRICS
    for name, value in metrics.items():
        if METRIC_RE.fullmatch(name) is None:
            return Refusal.BAD_METRIC_NAME
        if not _metric_value(value):
            return Refusal.BAD_METRIC_VALUE
    ts = _timestamp(obj.get("ts"), now)
    if ts is None:
        return Refusal.BAD_TIMESTAMP
    tag = tags[model]
    try:
        return TelemetrySample(
            model=model,
            version=tag.version,
            rollout_id=tag.rollout_id,
            arm=tag.arm,
            metrics=metrics,  # checked above
            ts=ts,
        )
    except ProtocolError:  # only if the store held a tag the protocol refuses
        return Refusal.MALFORMED


# --- batches -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payload:
    """One encoded `telemetry` message, how many samples it carries and its batch_id."""

    data: bytes
    samples: int
    batch_id: str | None = None


def encode_batches(
    samples: Sequence[TelemetrySample],
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    new_id: Callable[[], str] | None = None,
) -> tuple[list[Payload], int]:
    """Encode samples as `telemetry` payloads of at most `max_bytes` and MAX_SAMPLES
    samples each, splitting in halves where needed; also returns how many samples could
    not be sent at all (one sample larger than `max_bytes`: only with a tiny limit).
    With `new_id`, each payload carries a `batch_id` from it."""
    payloads: list[Payload] = []
    unsendable = 0
    pending = [samples[i : i + MAX_SAMPLES] for i in range(0, len(samples), MAX_SAMPLES)]
    pending.reverse()
    while pending:
        chunk = pending.pop()
        batch_id = None if new_id is None else new_id()
        try:
            data = TelemetryBatch(samples=tuple(chunk), batch_id=batch_id).to_json()
            if len(data) > max_bytes:
                raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"{len(data)} > {max_bytes}")
        except ProtocolError as exc:
            if exc.code is not ErrorCode.PAYLOAD_TOO_LARGE:
                raise
            if len(chunk) == 1:
                unsendable += 1
                continue
            half = len(chunk) // 2
            pending += [chunk[half:], chunk[:half]]  # the first half is popped first
            continue
        payloads.append(Payload(data, len(chunk), batch_id))
    return payloads, unsendable


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchPolicy:
    max_samples: int = 50
    max_age_s: float = 5.0
    max_queued: int = 2000
    max_payload_bytes: int = MAX_PAYLOAD_BYTES


@dataclass(slots=True)
class _Pending:
    since: float
    samples: list[TelemetrySample] = field(default_factory=list)


class Batcher:
    """Samples waiting per model until their batch is due (size or age, first wins).

    At most `max_queued` samples wait in all; a sample beyond that is dropped (the newest:
    the queued ones are already counted towards a batch that is about to be due)."""

    def __init__(self, policy: BatchPolicy, *, new_id: Callable[[], str] | None = None) -> None:
        self.policy = policy
        self._new_id = new_id
        self._pending: dict[str, _Pending] = {}
        self.queued = 0
        self.dropped = 0
        self.unsendable = 0

    def add(self, sample: TelemetrySample, now: float) -> bool:
        """Queue `sample` (monotonic `now`); False when the queue is full (counted)."""
        if self.queued >= self.policy.max_queued:
            self.dropped += 1
            return False
        pending = self._pending.get(sample.model)
        if pending is None:
            pending = self._pending[sample.model] = _Pending(since=now)
        pending.samples.append(sample)
        self.queued += 1
        return True

    def next_due(self) -> float | None:
        """When the oldest batch becomes due by age (monotonic), or None when empty."""
        if not self._pending:
            return None
        return min(p.since for p in self._pending.values()) + self.policy.max_age_s

    def take_due(self, now: float, *, everything: bool = False) -> list[Payload]:
        """Encode and forget the batches that are due at `now` (all with `everything`)."""
        policy = self.policy
        due = [
            model
            for model, pending in self._pending.items()
            if everything
            or len(pending.samples) >= policy.max_samples
            or now - pending.since >= policy.max_age_s
        ]
        payloads: list[Payload] = []
        for model in sorted(due):
            samples = self._pending.pop(model).samples
            self.queued -= len(samples)
            for start in range(0, len(samples), policy.max_samples):
                encoded, unsendable = encode_batches(
                    samples[start : start + policy.max_samples],
                    max_bytes=policy.max_payload_bytes,
                    new_id=self._new_id,
                )
                payloads += encoded
                self.unsendable += unsendable
        return payloads


class Backlog:
    """Encoded payloads waiting for the broker, oldest first, at most `max_bytes` in all
    (a device offline for long keeps its newest telemetry; what is dropped is counted)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: deque[Payload] = deque()
        self.bytes = 0
        self.dropped_payloads = 0
        self.dropped_samples = 0

    def __len__(self) -> int:
        return len(self._items)

    def extend(self, payloads: Iterable[Payload]) -> None:
        for payload in payloads:
            self._items.append(payload)
            self.bytes += len(payload.data)
        self._trim()

    def pop(self) -> Payload | None:
        """The oldest payload, or None."""
        if not self._items:
            return None
        payload = self._items.popleft()
        self.bytes -= len(payload.data)
        return payload

    def push_back(self, payload: Payload) -> None:
        """Return a payload that could not be handed over; it goes out first next time."""
        self._items.appendleft(payload)
        self.bytes += len(payload.data)
        self._trim()

    def _trim(self) -> None:
        while self.bytes > self.max_bytes and self._items:
            dropped = self._items.popleft()
            self.bytes -= len(dropped.data)
            self.dropped_payloads += 1
            self.dropped_samples += dropped.samples


RESEND_FIRST_S = 5.0
RESEND_MAX_S = 60.0
MAX_UNCONFIRMED = 256  # payloads sent and not yet confirmed, at most


@dataclass(slots=True)
class _Held:
    payload: Payload
    attempts: int
    due: float


class Unconfirmed:
    """Payloads sent with a `batch_id` that the server has not confirmed yet, oldest
    first, at most `max_payloads` of them and `max_bytes` in all (beyond, the oldest are
    dropped and counted). Each is due again `first_s` after it was sent, doubling to
    `max_s`. In memory: a restarted agent has lost what was held here."""

    def __init__(
        self,
        *,
        max_payloads: int = MAX_UNCONFIRMED,
        max_bytes: int,
        first_s: float = RESEND_FIRST_S,
        max_s: float = RESEND_MAX_S,
    ) -> None:
        self.max_payloads = max_payloads
        self.max_bytes = max_bytes
        self.first_s = first_s
        self.max_s = max_s
        self._held: dict[str, _Held] = {}
        self.bytes = 0
        self.confirmed_payloads = 0
        self.resent_payloads = 0
        self.dropped_payloads = 0
        self.dropped_samples = 0

    def __len__(self) -> int:
        return len(self._held)

    def sent(self, payload: Payload, now: float) -> list[Payload]:
        """`payload` was handed to the link at `now` (first or again); the payloads
        dropped to make room (oldest first), if any."""
        batch_id = payload.batch_id
        if batch_id is None:
            return []
        held = self._held.get(batch_id)
        if held is not None:
            held.due = now + min(self.first_s * 2**held.attempts, self.max_s)
            held.attempts += 1
            self.resent_payloads += 1
            return []
        self._held[batch_id] = _Held(payload, 1, now + self.first_s)
        self.bytes += len(payload.data)
        dropped: list[Payload] = []
        while len(self._held) > self.max_payloads or self.bytes > self.max_bytes:
            oldest = self._held.pop(next(iter(self._held))).payload
            self.bytes -= len(oldest.data)
            self.dropped_payloads += 1
            self.dropped_samples += oldest.samples
            dropped.append(oldest)
        return dropped

    def confirm(self, batch_ids: Iterable[str]) -> int:
        """Forget the payloads the server confirmed; how many were held."""
        removed = 0
        for batch_id in batch_ids:
            held = self._held.pop(batch_id, None)
            if held is not None:
                self.bytes -= len(held.payload.data)
                removed += 1
        self.confirmed_payloads += removed
        return removed

    def due(self, now: float) -> list[Payload]:
        """The payloads due again at `now`, oldest first (sent() marks each as sent)."""
        return [held.payload for held in self._held.values() if held.due <= now]

    def next_due(self) -> float | None:
        """When the next payload is due again (monotonic), or None when none is held."""
        return min((held.due for held in self._held.values()), default=None)

    def reconnected(self, now: float) -> None:
        """After a (re)connection: every payload goes again soon, from the first delay
        (the link sends what it had queued itself; the server gets `first_s` to answer)."""
        due = now + self.first_s
        for held in self._held.values():
            held.attempts, held.due = 1, min(held.due, due)


@dataclass(kw_only=True, slots=True)
class TelemetryCounters:
    """What happened to the applications' samples since the agent started."""

    received: int = 0
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in Refusal})
    sent_payloads: int = 0
    sent_samples: int = 0
    acked_payloads: int = 0

    def refuse(self, reason: Refusal) -> None:
        self.refused[reason.value] += 1
