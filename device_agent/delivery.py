"""Update events until the server has them: `events.json` and sending again with backoff.

The broker's PUBACK only says the broker has a message, not that the bridge got it:
after a broker restart the agent may reconnect before the bridge has subscribed again,
and the broker then drops the agent's events (MQTT 3.1.1 cannot even say so). So each
event gets a random `event_id` and is written to `events.json` (atomically, fsynced)
before it is published; it is published again, with backoff, while connected, until an
`acks` message from the server names its id. The server stores an event once per
(device, event_id), so sending again is harmless. After a restart of the agent the
events on disk are sent again.

An event equal to the last one added (but for its time and id) is not added again:
after a crash between reporting a job's outcome and journaling the next state,
recovery reports that outcome a second time, and it is the same news.
"""

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.fsutil import write_json_atomic
from device_agent.protocol.messages import UpdateEvent, dumps_json, parse_acks

log = logging.getLogger(__name__)

EVENTS_VERSION = 1
# Events kept unconfirmed at most; beyond, the oldest are dropped (a server that never
# confirms must not fill the disk). An update sends about a dozen.
MAX_PENDING = 1000
RESEND_FIRST_S = 5.0
RESEND_MAX_S = 60.0


def _repeat_key(event: UpdateEvent) -> str:
    data = event.to_dict()
    data.pop("ts")
    data.pop("event_id", None)
    return hashlib.sha256(dumps_json(data)).hexdigest()


class EventOutbox:
    """The unconfirmed events on disk, oldest first. Not thread-safe: EventDelivery locks."""

    def __init__(self, path: Path, *, max_pending: int = MAX_PENDING) -> None:
        self.path = path
        self.max_pending = max_pending
        self.pending: dict[str, UpdateEvent] = {}
        self.last: str | None = None
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            data = json.loads(raw)
            if data.get("v") != EVENTS_VERSION:
                raise ValueError(f"version {data.get('v')!r} is not {EVENTS_VERSION}")
            last = data["last"]
            events = [UpdateEvent.from_dict(item) for item in data["pending"]]
        except (ValueError, KeyError, TypeError, AttributeError, ProtocolError):
            # The events are lost, not the agent: it goes on, and says so.
            log.exception("%s is unreadable; moving it aside", self.path)
            os.replace(self.path, self.path.with_suffix(".corrupt"))
            return
        self.last = last if isinstance(last, str) else None
        self.pending = {e.event_id: e for e in events if e.event_id is not None}

    def _save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "v": EVENTS_VERSION,
                "last": self.last,
                "pending": [event.to_dict() for event in self.pending.values()],
            },
        )

    def add(self, event: UpdateEvent) -> UpdateEvent | None:
        """Give `event` an id and keep it durably; None if it repeats the last one added."""
        key = _repeat_key(event)
        if key == self.last:
            return None
        event_id = secrets.token_hex(16)
        stored = replace(event, event_id=event_id)
        self.pending[event_id] = stored
        while len(self.pending) > self.max_pending:
            dropped = self.pending.pop(next(iter(self.pending)))
            log.warning(
                "more than %d events unconfirmed; dropped the oldest (seq %d, %s)",
                self.max_pending,
                dropped.seq,
                dropped.phase,
            )
        self.last = key
        self._save()
        return stored

    def confirm(self, event_ids: Iterable[str]) -> int:
        """Forget the events the server confirmed; how many were pending."""
        removed = sum(self.pending.pop(event_id, None) is not None for event_id in event_ids)
        if removed:
            self._save()
        return removed


@dataclass(slots=True)
class _Attempt:
    count: int
    due: float


class EventDelivery:
    """Sends events through `send` and again until confirmed (a thread, started by start()).

    `send(payload)` publishes on the device's `events` topic (QoS 1); `connected()` says
    whether sending now can reach the broker. Call `on_acks` with each `acks` payload and
    `on_connected` after each (re)connection.
    """

    def __init__(
        self,
        outbox: EventOutbox,
        *,
        send: Callable[[bytes], object],
        connected: Callable[[], bool],
        first_s: float = RESEND_FIRST_S,
        max_s: float = RESEND_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self._send = send
        self._connected = connected
        self.first_s = first_s
        self.max_s = max_s
        self._clock = clock
        self._lock = threading.Condition()
        now = clock()
        # Events found on disk go out as soon as the link is up.
        self._attempts = {event_id: _Attempt(0, now) for event_id in outbox.pending}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def event(self, event: UpdateEvent) -> None:
        """Keep `event` on disk, then publish it (Runner's Publisher.event)."""
        with self._lock:
            stored = self.outbox.add(event)
            if stored is None or stored.event_id is None:
                return
            self._attempts = {k: v for k, v in self._attempts.items() if k in self.outbox.pending}
            self._attempts[stored.event_id] = _Attempt(1, self._clock() + self.first_s)
            self._lock.notify_all()
        self._publish(stored)

    def unconfirmed(self) -> int:
        with self._lock:
            return len(self.outbox.pending)

    def wait_confirmed(self, timeout: float) -> bool:
        """Whether the server confirmed every event within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.outbox.pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def on_acks(self, payload: bytes) -> None:
        """An `acks` message arrived (paho's thread): forget the events it names."""
        try:
            ack = parse_acks(payload)
        except ProtocolError as exc:
            log.warning("ignored a malformed acks message: %s", exc)
            return
        with self._lock:
            if self.outbox.confirm(ack.event_ids):
                for event_id in ack.event_ids:
                    self._attempts.pop(event_id, None)
                self._lock.notify_all()

    def on_connected(self) -> None:
        """After a (re)connection: unconfirmed events go again soon, from the first delay."""
        with self._lock:
            due = self._clock() + self.first_s
            for attempt in self._attempts.values():
                attempt.count, attempt.due = 1, min(attempt.due, due)
            self._lock.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-delivery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    def resend_due(self) -> float:
        """Publish the events whose time has come; seconds until the next one is due."""
        if not self._connected():
            return self.first_s
        now = self._clock()
        due: list[UpdateEvent] = []
        with self._lock:
            for event_id, attempt in self._attempts.items():
                if attempt.due <= now:
                    attempt.due = now + min(self.first_s * 2**attempt.count, self.max_s)
                    attempt.count += 1
                    due.append(self.outbox.pending[event_id])
            wait = min((a.due for a in self._attempts.values()), default=now + self.max_s) - now
        for event in due:
            log.info("sending unconfirmed event seq=%d phase=%s again", event.seq, event.phase)
            self._publish(event)
        return max(0.05, wait)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.resend_due()
            except Exception:
                log.exception("could not send events again")
                wait = self.first_s
            with self._lock:
                if not self._stop.is_set():
                    self._lock.wait(wait)

    def _publish(self, event: UpdateEvent) -> None:
        try:
            self._send(event.to_json())
        except Exception:
            log.exception("could not publish an event; it is sent again later")
