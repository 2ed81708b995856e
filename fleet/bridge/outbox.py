"""The desired-state outbox: publish every DesiredState queued in DesiredOutbox.

The director only writes rows (seq and signed envelope, and the row queued with that
seq, in one transaction). This thread scans the queue, publishes each queued row's
envelope retained at QoS 1 to `fleet/v1/devices/<id>/desired`, and once the broker
PUBACKs it records `published_seq = seq` and removes the row from the queue, both
conditional on the seq sent (`WHERE seq = <the seq we sent>`), so a row rewritten
meanwhile stays queued and is published again. Nothing is lost when the bridge or the
broker is down: the row simply stays queued until a publish is acked.

Latency: on PostgreSQL the director NOTIFYs a channel in every transaction that leaves
rows behind, and `OutboxListener` wakes this thread when one commits; the poll (every
`poll_seconds`) stays, as the fallback and as the only way on other databases.

Several bridges: they split the inbound messages (`$share/...`), but one publishes: the
listener holds a PostgreSQL advisory lock (OUTBOX_LOCK) on its connection, and only the
bridge holding it scans and publishes. When that bridge or its connection dies the lock
goes with the session and another bridge takes it within LEADER_RETRY_SECONDS. (Two
publishing at once for a moment is harmless: a desired state is retained, and a device
ignores a seq it already has.) Other databases: a single bridge, always publishing.

A broker that comes back with older retained desired states than it acknowledged (killed
before its last save, restored from an old file): on every connect, before it records or
publishes anything, the outbox checks the broker's retained sentinel and queues again
what the broker lost (fleet/bridge/sentinel.py); after each batch it records it
publishes the sentinel.

Flow control: at most `window`, and never more than the connection's `inflight_limit`
(the broker's Receive Maximum), publishes are handed to paho and not yet acknowledged,
sentinel publishes included; paho sends each at once. paho sends all it holds again
after a reconnect, so that stays within the broker's limit too. This thread tops the
window up when half of it is acknowledged and records PUBACKs in batches (one UPDATE per
distinct seq per batch, not one per row).
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple, Protocol

from django.db import close_old_connections, connection

from device_agent.protocol.topics import Channel, topic_for
from fleet.bridge.handlers import RateLimitedLog
from fleet.bridge.sentinel import SENTINEL_TOPIC, SentinelCheck, sentinel_payload
from fleet.bridge.services import DesiredQueue, desired_queue
from fleet.bulk import database_now, listening, listening_supported
from telemetry import metrics

logger = logging.getLogger(__name__)

RECORD_BATCH = 1000  # PUBACKs recorded per transaction at most...
RECORD_DELAY = 0.1  # ...or after this many seconds, whichever comes first
LISTEN_TIMEOUT = 0.5  # the listener checks for a stop this often
LISTEN_RETRY_SECONDS = 5.0  # after the listener's connection failed
LEADER_RETRY_SECONDS = 2.0  # a bridge that does not publish asks for the lock this often
OUTBOX_LOCK = 0x666C_6F62  # pg advisory lock key of the publishing bridge ("flob")
REFUSED_RETRY_SECONDS = 30.0  # a publish the broker refused is not retried sooner


class Publisher(Protocol):
    """What the outbox needs of the MQTT connection (MqttConnection, or a fake in tests)."""

    @property
    def connected(self) -> bool: ...

    @property
    def inflight_limit(self) -> int: ...

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None: ...


class _Row(NamedTuple):
    pk: int
    seq: int
    device_id: str
    envelope: bytes


class Outbox:
    """Publishes DesiredState rows that are behind; `run()` is its thread's body.

    `on_published(mid, ok)` is called on paho's network thread for every PUBACK.
    """

    def __init__(
        self,
        *,
        publisher: Publisher,
        poll_seconds: float,
        batch_size: int,
        window: int,
        sentinel: SentinelCheck | None = None,
        queue: DesiredQueue | None = None,
    ) -> None:
        self._publisher = publisher
        # The director's queue (fleet.director), as the fleet app registered it.
        self._queue = queue or desired_queue()
        self._sentinel = sentinel
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._window = window
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._committed = threading.Event()  # set by the listener: rows were committed
        # Whether this bridge publishes (see "Several bridges"): yes unless told otherwise;
        # on PostgreSQL the bridge says no until its listener holds the lock.
        self._leading = threading.Event()
        self._leading.set()
        # Shared with the network thread, under _lock:
        self._pending: dict[int, tuple[int, int]] = {}  # mid -> (pk, seq) awaiting PUBACK
        self._others: set[int] = set()  # mids of sentinel publishes (QoS 1) awaiting PUBACK
        self._low_water = 0  # wake this thread when _pending falls to it
        self._early: dict[int, bool] = {}  # PUBACKs that arrived before publish() returned
        self._acked: list[tuple[int, int, bool]] = []  # (pk, seq, ok) not yet recorded
        self._acked_since = 0.0
        # This thread only:
        self._sentinel_due: datetime | None = None  # recorded, sentinel not yet published
        self._sent: dict[int, int] = {}  # pk -> seq handed to paho and not yet recorded
        self._refused: dict[int, tuple[int, float]] = {}  # pk -> (seq, retry after)
        self._buffer: deque[_Row] = deque()
        self._cursor = 0
        self._scan_more = True
        self._log = RateLimitedLog(logger)

    # --- network thread ---------------------------------------------------------------------

    def on_published(self, mid: int, ok: bool) -> None:
        with self._lock:
            entry = self._pending.pop(mid, None)
            if entry is None:
                if mid in self._others:
                    self._others.discard(mid)
                else:
                    self._early[mid] = ok
                return
            if not self._acked:
                self._acked_since = time.monotonic()
            self._acked.append((*entry, ok))
            # Wake the outbox thread when there is a batch worth doing, not on every PUBACK.
            wake = len(self._pending) in (self._low_water, 0) or len(self._acked) >= RECORD_BATCH
        if wake:
            self._wake.set()

    # --- listener thread --------------------------------------------------------------------

    def committed(self) -> None:
        """The director committed rows that are behind: scan now, not at the next poll."""
        self._committed.set()
        self._wake.set()

    def lead(self, leading: bool) -> None:
        """This bridge starts (True) or stops (False) publishing desired states."""
        if leading:
            self._leading.set()
            self.committed()  # everything behind, now
        else:
            self._leading.clear()
        metrics.BRIDGE_OUTBOX_LEADER.set(1 if leading else 0)

    # --- outbox thread ----------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Publishes handed to paho and not yet acknowledged."""
        with self._lock:
            return len(self._pending) + len(self._others)

    @property
    def window(self) -> int:
        """How many publishes may be outstanding now."""
        return max(1, min(self._window, self._publisher.inflight_limit))

    def run(self, stop: threading.Event, *, drain_seconds: float = 5.0) -> None:
        """Publish until `stop` is set, then wait up to `drain_seconds` for PUBACKs."""
        next_scan = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if self._committed.is_set():
                    # Cleared before the scan's query: a commit notified after it sets it again.
                    self._committed.clear()
                    self.rescan()
                if now >= next_scan:
                    self.rescan()
                    next_scan = now + self._poll_seconds
                if not self._step_safely():
                    self._wake.wait(min(RECORD_DELAY, max(0.0, next_scan - now)))
                    self._wake.clear()
            self.drain(drain_seconds)
        finally:
            connection.close()

    def drain(self, timeout: float) -> None:
        """Record PUBACKs until none are outstanding or `timeout` passes (at shutdown)."""
        deadline = time.monotonic() + timeout
        while self.outstanding and self._publisher.connected and time.monotonic() < deadline:
            self._wake.wait(RECORD_DELAY)
            self._wake.clear()
            self._record(force=True)
        self._record(force=True)

    def _step_safely(self) -> bool:
        try:
            close_old_connections()
            return self.step()
        except Exception:
            self._log.warning("step", "outbox step failed; retrying", exc_info=True)
            connection.close()
            time.sleep(self._poll_seconds)
            return False

    def rescan(self) -> None:
        """Look for rows that are behind again (every poll interval), from where the scan is."""
        self._scan_more = True

    def step(self) -> bool:
        """One round: record acknowledged publishes, publish more. False when idle."""
        if self._checking():
            return False
        recorded = self._record(force=False)
        if not self._publisher.connected:
            return recorded  # paho resends what it holds after reconnecting
        if not self._leading.is_set():
            self._buffer.clear()  # another bridge publishes; what is in flight is recorded
            self._scan_more = False
            return recorded
        due = self._sentinel_due
        if due is not None and self._publish_other(sentinel_payload(due), qos=1, retain=True):
            self._sentinel_due = None
        published = 0
        window = self.window
        self._low_water = window // 2
        free = window - self.outstanding
        while free > 0:
            if not self._buffer:
                if not self._scan_more or not self._refill():
                    break
                continue
            row = self._buffer.popleft()
            if self._publish(row):
                published += 1
                free -= 1
        metrics.BRIDGE_DESIRED_INFLIGHT.set(self.outstanding)
        return recorded or published > 0

    def _refill(self) -> bool:
        """Read the next queued rows into the buffer; False once the scan is done.

        Keys first, envelopes second: every commit of the director restarts the scan from
        the first row, and the rows still on their way to the broker (up to the window)
        stay queued until their PUBACKs are recorded. Reading their envelopes again each
        time was most of what the scan read.
        """
        keys = self._queue.desired_outbox_keys(after=self._cursor, limit=self._batch_size)
        if len(keys) < self._batch_size:
            self._cursor = 0
            self._scan_more = False  # the next scan starts after the poll interval
        else:
            self._cursor = keys[-1][0]
        now = time.monotonic()
        wanted = []
        for pk, seq in keys:
            if self._sent.get(pk) == seq:
                continue  # already on its way
            refused = self._refused.get(pk)
            if refused is not None and refused[0] == seq and refused[1] > now:
                continue
            wanted.append(pk)
        if wanted:
            # The row as it is now: rewritten since the first read, it goes out with its
            # new seq and envelope (and is recorded with that seq).
            found = set()
            for pk, seq, device_id, envelope in self._queue.desired_outbox_envelopes(pks=wanted):
                found.add(pk)
                if self._sent.get(pk) != seq:
                    self._buffer.append(_Row(pk, seq, device_id, envelope))
            if gone := [pk for pk in wanted if pk not in found]:
                self._queue.desired_outbox_forget(pks=gone)  # deleted outside the ORM
        return bool(keys)

    def _checking(self) -> bool:
        """Whether the broker's retained sentinel is being checked (nothing is recorded or
        published meanwhile); runs the check's steps."""
        check = self._sentinel
        if check is None or not check.pending:
            return False
        if check.begin():
            # Acknowledged on the connection that ended and not recorded yet: the broker
            # may have lost them with it. They stay queued and go out again.
            with self._lock:
                dropped, self._acked = self._acked, []
            for pk, seq, _ok in dropped:
                if self._sent.get(pk) == seq:
                    del self._sent[pk]
            self._buffer.clear()
            self.rescan()
        if check.timed_out():
            if self._leading.is_set() and self._publisher.connected:
                self._log.warning(
                    "sentinel",
                    "no answer on %s: cannot tell whether the broker kept its retained "
                    "desired states (may the bridge read and write that topic?)",
                    SENTINEL_TOPIC,
                )
            return False
        result = check.result()
        if result is not None:
            try:
                self._requeue_lost(result.recorded_at)
            except Exception:
                check.put_back(result)  # the database failed: again at the next step
                raise
            return False
        if not self._leading.is_set() or not self._publisher.connected:
            return True  # another bridge publishes (the check times out) or no connection
        probe = check.probe_due()
        if probe is not None:
            self._publish_other(probe, qos=0, retain=False)
        return True

    def _requeue_lost(self, held: datetime | None) -> None:
        """The broker holds the sentinel of `held` (None: no sentinel): queue again what
        was recorded after it."""
        queued = self._queue.desired_states_requeue_since(recorded_since=held)
        if queued:
            metrics.BRIDGE_DESIRED_REQUEUED.inc(queued)
            logger.warning(
                "the broker holds %s: publishing %d desired states recorded after it again",
                f"the retained sentinel of {held.isoformat()}" if held else "no retained sentinel",
                queued,
            )
            self.committed()

    def _publish_other(self, payload: bytes, *, qos: int, retain: bool) -> bool:
        """Publish on SENTINEL_TOPIC; its PUBACK (or QoS 0 write) is not a desired state's."""
        mid = self._publisher.publish(SENTINEL_TOPIC, payload, qos=qos, retain=retain)
        if mid is None:
            return False
        with self._lock:
            if qos > 0 and mid not in self._early:
                self._others.add(mid)  # in flight: counted in the window
            # Its PUBACK, if already here, and any other that matched no publish of ours
            # (see _publish): nothing waits for them.
            self._early.clear()
        return True

    def _publish(self, row: _Row) -> bool:
        if not row.envelope:
            # An empty retained payload would delete the device's desired state.
            self._log.warning("empty", "desired state %d seq %d has no envelope", row.pk, row.seq)
            return False
        mid = self._publisher.publish(
            topic_for(row.device_id, Channel.DESIRED), row.envelope, qos=1, retain=True
        )
        if mid is None:
            return False
        self._sent[row.pk] = row.seq
        with self._lock:
            ok = self._early.pop(mid, None)
            # This thread is the only one that publishes: any other PUBACK that came before
            # its publish was known is one nothing waits for (a sentinel's), and must not
            # be taken for a later publish that gets the same packet id.
            self._early.clear()
            if ok is None:
                self._pending[mid] = (row.pk, row.seq)
            else:
                if not self._acked:
                    self._acked_since = time.monotonic()
                self._acked.append((row.pk, row.seq, ok))
        return True

    def _record(self, *, force: bool) -> bool:
        with self._lock:
            if not self._acked:
                return False
            due = (
                force
                or len(self._acked) >= RECORD_BATCH
                or not self._pending
                or time.monotonic() - self._acked_since >= RECORD_DELAY
            )
            if not due:
                return False
            acked, self._acked = self._acked, []
        published = [(pk, seq) for pk, seq, ok in acked if ok]
        try:
            # The database's clock: every bridge records `published_at` on it, and the
            # retained sentinel compares them (fleet/bridge/sentinel.py).
            at = database_now()
            self._queue.desired_states_mark_published(published=published, at=at)
        except Exception:
            with self._lock:  # keep them for the next attempt
                self._acked = acked + self._acked
            raise
        if published and self._sentinel is not None:
            self._sentinel_due = at
        retry_at = time.monotonic() + REFUSED_RETRY_SECONDS
        refused = 0
        for pk, seq, ok in acked:
            if self._sent.get(pk) == seq:
                del self._sent[pk]
            if ok:
                self._refused.pop(pk, None)
            else:
                self._refused[pk] = (seq, retry_at)
                refused += 1
        # Counted once per batch, not once per row.
        if len(acked) > refused:
            metrics.BRIDGE_DESIRED_PUBLISHED.inc(len(acked) - refused)
        if refused:
            metrics.BRIDGE_DESIRED_REFUSED.inc(refused)
        return True


class OutboxListener:
    """Wakes the outbox when the director commits: LISTEN on OUTBOX_CHANNEL (PostgreSQL).

    On a connection of its own, in autocommit, so a notification arrives as soon as the
    director's transaction commits. Without it (other databases, or while its connection
    is down) the outbox still finds the rows at its next poll: this only spares that
    latency, once per committed batch.
    """

    def __init__(
        self,
        *,
        on_commit: Callable[[], None],
        on_leader: Callable[[bool], None],
        channel: str | None = None,
    ) -> None:
        self._on_commit = on_commit
        self._on_leader = on_leader
        self._channel = channel or desired_queue().OUTBOX_CHANNEL
        self._log = RateLimitedLog(logger)

    def run(self, stop: threading.Event) -> None:
        """Listen until `stop` is set (the listener thread's body)."""
        if not listening_supported():
            return
        while not stop.is_set():
            try:
                self._listen(stop)
            except Exception:
                self._log.warning("listen", "outbox listener failed; retrying", exc_info=True)
                stop.wait(LISTEN_RETRY_SECONDS)
            finally:
                self._on_leader(False)  # the lock went with the connection

    def _listen(self, stop: threading.Event) -> None:
        with listening() as session:
            while not stop.is_set():
                if session.try_lock(OUTBOX_LOCK):
                    break
                stop.wait(LEADER_RETRY_SECONDS)  # another bridge publishes
            else:
                return
            logger.info("this bridge publishes desired states (outbox lock taken)")
            session.listen(self._channel)
            self._on_leader(True)  # and scans whatever was committed before we listened
            while not stop.is_set():
                for _ in session.notifications(LISTEN_TIMEOUT):
                    self._on_commit()
