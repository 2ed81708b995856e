"""The retained sentinel: notices a broker that lost retained desired states it had
acknowledged, so the outbox publishes them again.

A broker keeps retained messages in memory and saves them now and then (Mosquitto every
`autosave_interval` seconds): killed in between, or restored from an old persistence
file, or replaced by an empty one, it comes back with older desired states than the
outbox recorded as published, or none. Devices refuse the older ones safely
(`replayed_command`) but would not get their current one until its next change.

How the bridge notices: each time the outbox records a batch of acknowledged desired
states (`published_at = at`), it then publishes `at` retained on SENTINEL_TOPIC, on the
same connection, after those desired states. A broker processes one connection's
packets in order and saves its retained messages in one snapshot, so a broker that
holds sentinel `at` holds every desired state recorded up to `at`. On every connect
the bridge subscribes to SENTINEL_TOPIC (the broker sends the retained sentinel) and
then publishes a probe to it, which comes back after the retained message. The
outbox, which publishes and records nothing until the check is done, then queues again
every desired state recorded after the sentinel the broker holds, or every one when it
holds none (fleet.director.desired_states_requeue_since).

A broker that delivers retained messages after later ones (not Mosquitto) makes the
check see no sentinel: every desired state goes out again, which is safe, only more
work. A broker that never delivers the probe (an ACL without the sentinel topic) ends
the check after CHECK_SECONDS with a warning, and nothing is republished.
"""

import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

SENTINEL_TOPIC = "fleet/v1/bridge/sentinel"
MAX_PAYLOAD = 256
PROBE_RETRY_SECONDS = 3.0  # a probe is QoS 0: sent again if it did not come back...
CHECK_SECONDS = 10.0  # ...and the check gives up after this long


def sentinel_payload(at: datetime) -> bytes:
    """The retained sentinel: the recording time of the last batch published before it."""
    return json.dumps({"v": 1, "recorded_at": at.isoformat()}).encode()


def probe_payload(nonce: str) -> bytes:
    return json.dumps({"v": 1, "probe": nonce}).encode()


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What the broker holds: the sentinel's time, or None when it holds no sentinel."""

    recorded_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Parsed:
    recorded_at: datetime | None = None
    probe: str | None = None


def _parse(payload: bytes) -> _Parsed | None:
    """A sentinel or a probe; None for anything else (it is ignored)."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get("v") != 1:
        return None
    probe = body.get("probe")
    if isinstance(probe, str):
        return _Parsed(probe=probe)
    recorded_at = body.get("recorded_at")
    if not isinstance(recorded_at, str):
        return None
    try:
        parsed = datetime.fromisoformat(recorded_at)
    except ValueError:
        return None
    return _Parsed(recorded_at=parsed) if parsed.tzinfo is not None else None


class SentinelCheck:
    """The check of one connection: started on connect (paho's network thread), driven by
    the outbox thread (`probe_due`, `result`), fed by `received` (network thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = False
        self._fresh = False
        self._started = 0.0
        self._nonce = ""
        self._probed_at = 0.0
        self._retained: datetime | None = None
        self._result: CheckResult | None = None

    def start(self) -> None:
        """A new connection: its subscription to SENTINEL_TOPIC is on its way."""
        with self._lock:
            self._pending = True
            self._fresh = True
            self._started = time.monotonic()
            self._nonce = ""
            self._probed_at = 0.0
            self._retained = None
            self._result = None

    @property
    def pending(self) -> bool:
        return self._pending

    def begin(self) -> bool:
        """True once per started check: the outbox thread's cue to set it up."""
        with self._lock:
            fresh, self._fresh = self._fresh, False
            return fresh

    def probe_due(self) -> bytes | None:
        """A probe to publish now (the first, or again after PROBE_RETRY_SECONDS), or None."""
        now = time.monotonic()
        with self._lock:
            if not self._pending or self._result is not None:
                return None
            if self._nonce and now - self._probed_at < PROBE_RETRY_SECONDS:
                return None
            self._nonce = secrets.token_hex(8)
            self._probed_at = now
            return probe_payload(self._nonce)

    def timed_out(self) -> bool:
        """Whether the check gave up (then it is over, with no result)."""
        with self._lock:
            if self._pending and time.monotonic() - self._started > CHECK_SECONDS:
                self._pending = False
                return True
            return False

    def result(self) -> CheckResult | None:
        """The answer once the probe came back (the check is then over), else None."""
        with self._lock:
            found, self._result = self._result, None
            if found is not None:
                self._pending = False
            return found

    def put_back(self, result: CheckResult) -> None:
        """The outbox could not act on `result` (the database failed): keep it for the
        next attempt."""
        with self._lock:
            self._pending = True
            self._started = time.monotonic()
            self._result = result

    def received(self, payload: bytes, *, retain: bool) -> None:
        """A message on SENTINEL_TOPIC (network thread)."""
        parsed = _parse(payload)
        if parsed is None:
            return
        with self._lock:
            if not self._pending or self._result is not None:
                return
            if parsed.probe is not None:
                if parsed.probe == self._nonce:
                    self._result = CheckResult(self._retained)
            elif retain:
                # Only the retained copy the subscription delivers says what the broker
                # holds; a live sentinel is one a bridge publishes now.
                self._retained = parsed.recorded_at
