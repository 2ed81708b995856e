"""Decode one device message, check it and hand it to one service.

Checks, in order: the topic is `fleet/v1/devices/<id>/<channel>`; the payload is at
most 64 KiB of strict JSON with `"v": 1`; a `device_id` in it, if any, is the one in
the topic; the protocol parser accepts it; the device is enrolled and not revoked.
Whatever fails is dropped with a reason (an ErrorCode value or one of the REASON_*
below); nothing here raises on input. The payloads are docs/protocol.md's.
"""

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from django.utils import timezone

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    DeviceStatus,
    Presence,
    ReportedState,
    TelemetryBatch,
    UpdateEvent,
    loads_json,
)
from device_agent.protocol.topics import Channel, parse_topic
from fleet.bridge.client import InboundMessage
from fleet.bridge.services import DeviceReports, device_reports
from telemetry import metrics

if TYPE_CHECKING:
    # Only a type: the registry's rows pass through the bridge (fleet/bridge/services.py).
    from fleet.models import Device

logger = logging.getLogger(__name__)

REASON_UNKNOWN_DEVICE = "unknown_device"
REASON_REVOKED_DEVICE = "revoked_device"
REASON_TOPIC_MISMATCH = "topic_mismatch"
REASON_BACKPRESSURE = "backpressure"
REASON_INTERNAL_ERROR = "internal_error"
REASON_RETAINED = "retained"
# Reports that are news once: a retained copy (a device may set the flag; the broker
# replays it to every new subscription, after each restart) is not taken again.
_NOT_RETAINED = frozenset({Channel.EVENTS, Channel.TELEMETRY})
UNKNOWN_CHANNEL = "unknown"

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
DROPPED = "dropped"
ERROR = "error"

_DECODERS: dict[Channel, Callable[[object], object]] = {
    Channel.STATE: ReportedState.from_dict,
    Channel.EVENTS: UpdateEvent.from_dict,
    Channel.STATUS: DeviceStatus.from_dict,
    Channel.TELEMETRY: TelemetryBatch.from_dict,
}


# The drop reasons every device channel can see; others (rarer protocol error codes) still
# count, from their first drop on.
_COMMON_DROP_REASONS = (
    ErrorCode.MALFORMED.value,
    ErrorCode.PAYLOAD_TOO_LARGE.value,
    REASON_TOPIC_MISMATCH,
    REASON_UNKNOWN_DEVICE,
    REASON_REVOKED_DEVICE,
    REASON_BACKPRESSURE,
    REASON_INTERNAL_ERROR,
)


def bridge_metrics_initialise() -> None:
    """Create the bridge's labelled counters at zero for the channels, results and common
    drop reasons: a counter that appears at its first value hides that first burst from
    increase(), and a panel on one that never moved shows "No data" instead of 0."""
    for channel in _DECODERS:
        for result in (ACCEPTED, DUPLICATE, DROPPED, ERROR):
            metrics.BRIDGE_MESSAGES.labels(channel.value, result)
        for reason in _COMMON_DROP_REASONS:
            metrics.BRIDGE_DROPPED.labels(channel.value, reason)
    metrics.BRIDGE_MESSAGES.labels(UNKNOWN_CHANNEL, DROPPED)
    metrics.BRIDGE_DROPPED.labels(UNKNOWN_CHANNEL, ErrorCode.MALFORMED.value)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: metric labels, plus a reason when it was dropped."""

    channel: str
    result: str
    reason: str = ""


@dataclass(slots=True)
class Confirmed:
    """What to confirm to one device on `acks` once its batch commits."""

    event_ids: list[str] = field(default_factory=list)
    batch_ids: list[str] = field(default_factory=list)


def channel_label(topic: str) -> str:
    """The channel metric label of a topic without parsing it fully (for the network thread)."""
    last = topic.rpartition("/")[2]
    return last if last in Channel.__members__.values() else UNKNOWN_CHANNEL


class TelemetrySink(Protocol):
    """Where validated telemetry goes (telemetry.ingest stores it).

    The worker calls `add()` for each message of a batch (with the sha256 of its payload
    as `key`: the sink stores a message's samples once), then `take()` (in its thread),
    and hands what `take()` returned to the writer thread, which calls `write()` inside
    the transaction whose commit precedes the acks; `discard()` forgets what was added
    when the worker's transaction rolls back. `write()` raises OperationalError or
    InterfaceError for a retry (with the same argument). `flush()` is `write(take())`.
    """

    def add(
        self,
        *,
        device: "Device",
        batch: TelemetryBatch,
        received_at: datetime,
        key: str | None = None,
    ) -> None: ...

    def take(self) -> object: ...

    def write(self, taken: Any) -> None: ...

    def flush(self) -> None: ...

    def discard(self) -> None: ...


class DiscardTelemetry:
    """A sink that stores nothing (tests of the bridge alone): validated, counted, forgotten."""

    def add(
        self,
        *,
        device: "Device",
        batch: TelemetryBatch,
        received_at: datetime,
        key: str | None = None,
    ) -> None:
        return None

    def take(self) -> object:
        return None

    def write(self, taken: Any) -> None:
        return None

    def flush(self) -> None:
        return None

    def discard(self) -> None:
        return None


class RateLimitedLog:
    """Log a refused message at WARNING at most once per `interval` per reason.

    A misbehaving device can send thousands of bad messages a second; the counters carry
    the numbers, the log carries one example and how many were not logged.
    """

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self._log = log
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        suffix = f" ({suppressed} more like it not logged)" if suppressed else ""
        self._log.warning(message + suffix, *args, exc_info=exc_info)


class DeviceDirectory:
    """Device rows by device id, cached for a few seconds (positive and negative).

    Every message needs its device; the cache keeps a chatty fleet from costing a query
    per message. A revocation therefore takes up to `ttl` seconds to reach the bridge
    (the broker's CRL already keeps a revoked device from connecting).
    """

    MAX_ENTRIES = 100_000

    def __init__(self, ttl: float, reports: DeviceReports) -> None:
        self._ttl = ttl
        self._reports = reports
        self._entries: dict[str, tuple[float, Device | None]] = {}

    def get(self, device_id: str) -> "Device | None":
        now = time.monotonic()
        hit = self._entries.get(device_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        device = self._reports.devices_for_reports(device_ids=[device_id]).get(device_id)
        if self._ttl > 0:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()  # a flood of random ids must not grow memory
            self._entries[device_id] = (now, device)
        return device

    def prefetch(self, device_ids: Iterable[str]) -> None:
        """Read those of `device_ids` that are not cached (or are stale) in one query.

        The worker calls it per batch: when the entries of a busy fleet expire, the next
        batch reads its devices together rather than one query per device.
        """
        if self._ttl <= 0:
            return
        now = time.monotonic()
        entries = self._entries
        wanted = set()
        for device_id in device_ids:
            hit = entries.get(device_id)
            if hit is None or now - hit[0] >= self._ttl:
                wanted.add(device_id)
        if not wanted:
            return
        found = self._reports.devices_for_reports(device_ids=wanted)
        if len(entries) + len(wanted) > self.MAX_ENTRIES:
            entries.clear()
        for device_id in wanted:
            entries[device_id] = (now, found.get(device_id))


class Dispatcher:
    """Validates inbound messages and calls the services; run by the worker thread only."""

    def __init__(
        self,
        *,
        telemetry: TelemetrySink,
        device_cache_seconds: float,
        reports: DeviceReports | None = None,
    ) -> None:
        self.telemetry = telemetry
        # The registry's writes (fleet.reports), as it registered them.
        self._reports = reports = reports or device_reports()
        self._devices = DeviceDirectory(device_cache_seconds, reports)
        self._seen: set[int] = set()
        self._log = RateLimitedLog(logger)
        # A batch (begin() .. finish()): the message's index, and in deferred mode the
        # states and events to write together.
        self._index = 0
        self._deferred = False
        self._states: list[tuple[Device, ReportedState]] = []
        self._events: list[tuple[int, Device, UpdateEvent]] = []
        # The valid topics of the batch prepare() last saw, parsed: handle() needs them too.
        self._topics: dict[str, tuple[str, Channel]] = {}
        # The batch's events and telemetry messages that carry an id, by device id: once
        # the batch commits, the bridge confirms them to their devices on `acks`.
        self._confirmed: dict[str, Confirmed] = {}

    def begin(self, *, deferred: bool) -> None:
        """Start a batch. Deferred, `state` and `events` reports are only checked by
        handle() and written by finish() (an event's outcome says accepted until then);
        otherwise each is written as it is handled."""
        self._index = 0
        self._deferred = deferred
        self._states, self._events = [], []
        self._confirmed = {}

    def take_confirmed(self) -> dict[str, Confirmed]:
        """The event and batch ids of the batch, by device id, to confirm once the batch
        commits: new and repeated messages alike (a repeat means our last confirmation
        was lost)."""
        confirmed, self._confirmed = self._confirmed, {}
        return confirmed

    def finish(self) -> set[int]:
        """Write the reports the batch deferred: one statement batch for the states, one
        INSERT per few hundred events instead of a round trip per message, and one for the
        rollouts' news of both (in the batch's transaction). Returns the indexes (in the
        batch) of the events that were already stored (duplicates)."""
        states, events = self._states, self._events
        self._states, self._events = [], []
        reports = self._reports
        reports.devices_state_record(reports=states, news=False)
        created = reports.devices_event_record(
            reports=[(device, event) for _, device, event in events], news=False
        )
        reports.devices_news_record(
            device_pks={device.pk for device, _ in states}
            | {device.pk for (_, device, _), new in zip(events, created, strict=True) if new}
        )
        return {index for (index, _, _), new in zip(events, created, strict=True) if not new}

    def prepare(self, messages: Iterable[InboundMessage]) -> None:
        """Before a batch: read the devices it comes from that are not cached, together."""
        topics: dict[str, tuple[str, Channel]] = {}
        for message in messages:
            try:
                topics[message.topic] = parse_topic(message.topic)
            except ProtocolError:
                continue  # handle() drops it
        self._topics = topics
        self._devices.prefetch(device_id for device_id, _ in topics.values())

    def handle(self, message: InboundMessage) -> Outcome:
        """Check and store one message; the outcome says how (never raises on bad input)."""
        index = self._index
        self._index += 1
        parsed = self._topics.get(message.topic)
        if parsed is None:
            try:
                parsed = parse_topic(message.topic)
            except ProtocolError as exc:
                return self._drop(UNKNOWN_CHANNEL, exc.code, message, exc.detail)
        device_id, channel = parsed
        if channel not in _DECODERS:  # `desired`, `acks` are ours to publish, never reports
            return self._drop(channel, ErrorCode.MALFORMED, message, "not a device channel")
        if message.retain and channel in _NOT_RETAINED:
            return self._drop(channel, REASON_RETAINED, message, "a retained copy, not news")
        try:
            # Telemetry's parsers refuse a non-finite metric themselves.
            obj = loads_json(message.payload, finite_floats=channel is not Channel.TELEMETRY)
            claimed = obj.get("device_id", device_id)
            if claimed != device_id:
                return self._drop(
                    channel, REASON_TOPIC_MISMATCH, message, "payload names another device"
                )
            decoded = _DECODERS[channel](obj)
        except ProtocolError as exc:
            return self._drop(channel, exc.code, message, exc.detail)
        device = self._devices.get(device_id)
        if device is None:
            return self._drop(channel, REASON_UNKNOWN_DEVICE, message, "not enrolled")
        if device.revoked_at is not None:
            return self._drop(channel, REASON_REVOKED_DEVICE, message, "revoked")
        return self._dispatch(channel, device, decoded, message, index)

    def _dispatch(
        self,
        channel: Channel,
        device: "Device",
        decoded: object,
        message: InboundMessage,
        index: int,
    ) -> Outcome:
        result = ACCEPTED
        seen = True
        if isinstance(decoded, ReportedState):
            if self._deferred:
                self._states.append((device, decoded))
            else:
                self._reports.device_state_record(device=device, state=decoded)
        elif isinstance(decoded, UpdateEvent):
            if self._deferred:
                self._events.append((index, device, decoded))
            else:
                _, created = self._reports.device_event_record(device=device, event=decoded)
                result = ACCEPTED if created else DUPLICATE
            if decoded.event_id is not None:
                self._confirmation(device).event_ids.append(decoded.event_id)
        elif isinstance(decoded, DeviceStatus):
            online = decoded.status is Presence.ONLINE
            self._reports.device_presence_set(device=device, online=online, at=message.received_at)
            seen = online  # an `offline` is usually the broker's last will, not the device
        elif isinstance(decoded, TelemetryBatch):
            # The payload's digest: a redelivered or replayed message is stored once.
            self.telemetry.add(
                device=device,
                batch=decoded,
                received_at=message.received_at,
                key=hashlib.sha256(message.payload).hexdigest(),
            )
            if decoded.batch_id is not None:
                self._confirmation(device).batch_ids.append(decoded.batch_id)
        if seen:
            self._seen.add(device.pk)
        return Outcome(channel.value, result)

    def _confirmation(self, device: "Device") -> Confirmed:
        confirmed = self._confirmed.get(device.device_id)
        if confirmed is None:
            confirmed = self._confirmed[device.device_id] = Confirmed()
        return confirmed

    def _drop(self, channel: str, reason: str, message: InboundMessage, detail: str) -> Outcome:
        self._log.warning(
            f"drop:{reason}",
            "dropped a message on %r: %s (%s)",
            message.topic[:200],
            reason,
            detail[:200],
        )
        return Outcome(str(channel), DROPPED, str(reason))

    def flush_seen(self) -> int:
        """Write `last_seen_at` for the devices heard from since the last flush."""
        if not self._seen:
            return 0
        updated = self._reports.devices_seen_record(device_pks=self._seen, at=timezone.now())
        self._seen.clear()  # only once written: a failed flush is retried next time
        return updated
