"""The inbound worker: takes messages off paho's network thread, stores them, then acks.

paho's `on_message` only calls `offer()`. The worker thread drains the queue in
batches, reads the batch's devices (those not cached) with one query and handles each
message inside one transaction (in a savepoint of its own, except telemetry, which only
reads: the sink buffers its rows). After that commit it hands the batch to the writer
thread, which writes the batch's telemetry rows in a transaction of its own (on its own
database connection) and, once that commits, PUBACKs the batch in arrival order and
confirms the batch's events and telemetry messages to their devices (`acks`,
device_agent/delivery.py and metrics_server.py). So the
worker checks the next batch while the database takes in the rows of the previous one
(the database's share of ingesting telemetry is about as large as the bridge's own), and
acknowledgements still follow arrival order, batch after batch. A crash before the
commits loses nothing: the broker still holds every unacknowledged QoS 1 message for our
session.

Why the queue does not block: for QoS 1 the broker may have at most Receive Maximum
messages unacknowledged with us (MQTT 5 flow control, honoured by Mosquitto), so QoS 1
can never overfill memory and always goes in. Blocking the network thread instead
would also stall keepalives and the outbox's PUBACKs. QoS 0 (bulk telemetry) has no
flow control: beyond `queue_size` waiting messages it is dropped and counted as
`backpressure`, which is what QoS 0 means.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, cast

from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)

from device_agent.protocol.topics import Channel
from fleet.bridge.client import InboundMessage
from fleet.bridge.handlers import (
    DROPPED,
    DUPLICATE,
    ERROR,
    REASON_BACKPRESSURE,
    REASON_INTERNAL_ERROR,
    Confirmed,
    Dispatcher,
    Outcome,
    RateLimitedLog,
    channel_label,
)
from telemetry import metrics

logger = logging.getLogger(__name__)

_STOP = object()
_HAND_OVER_WAIT = 0.5  # seconds between checks for a dead writer or a stop
# The database is unreachable or locked: retry the whole batch, do not drop it.
_RETRYABLE = (OperationalError, InterfaceError)


class _Redo(Exception):
    """A message failed in a batch handled without savepoints: handle it again with them."""


class _Checked(NamedTuple):
    """A handled batch on its way to the writer: its messages, outcomes and telemetry,
    and the ids of its events and telemetry messages to confirm to their devices."""

    batch: list[InboundMessage]
    handled: list[tuple[Outcome, float]]
    rows: object  # what the telemetry sink's take() returned
    confirmed: dict[str, Confirmed]


class InboundWorker:
    """Two threads that turn queued messages into database rows and acknowledgements."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        ack: Callable[[Sequence[InboundMessage]], object],
        queue_size: int,
        batch_size: int,
        seen_flush_seconds: float,
        confirm: Callable[[Mapping[str, Confirmed]], object] = lambda confirmed: None,
    ) -> None:
        self._dispatcher = dispatcher
        self._ack = ack
        self._confirm = confirm
        self._queue: queue.Queue[object] = queue.Queue()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._seen_flush_seconds = seen_flush_seconds
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-worker", daemon=True)
        # One batch being written and one waiting: memory stays bounded, and the broker's
        # Receive Maximum holds back the rest.
        self._writes: queue.Queue[object] = queue.Queue(maxsize=1)
        self._writer = threading.Thread(target=self._write_loop, name="bridge-writer", daemon=True)
        self._log = RateLimitedLog(logger)

    # --- network thread -------------------------------------------------------------------

    def offer(self, message: InboundMessage) -> None:
        """Queue a message (paho's network thread); QoS 0 is dropped when the queue is full."""
        if message.qos == 0 and self._queue.qsize() >= self._queue_size:
            channel = channel_label(message.topic)
            metrics.BRIDGE_MESSAGES.labels(channel, DROPPED).inc()
            metrics.BRIDGE_DROPPED.labels(channel, REASON_BACKPRESSURE).inc()
            self._log.warning("backpressure", "queue full: dropping QoS 0 messages")
            return
        self._queue.put(message)

    # --- control ----------------------------------------------------------------------------

    def start(self) -> None:
        self._writer.start()
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Handle and acknowledge what is queued now, then end; unacked ones are redelivered."""
        self._queue.put(_STOP)
        self._thread.join(timeout)  # the worker thread stops the writer before it ends
        if self._thread.is_alive():
            self._abandon.set()  # e.g. the database is down: give up retrying
            self._thread.join(5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._writer.is_alive()

    # --- worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        next_flush = time.monotonic() + self._seen_flush_seconds
        try:
            while True:
                timeout = max(0.0, next_flush - time.monotonic())
                try:
                    first = self._queue.get(timeout=timeout)
                except queue.Empty:
                    first = None
                stop = first is _STOP
                batch: list[InboundMessage] = []
                if isinstance(first, InboundMessage):
                    batch.append(first)
                    stop = self._drain_into(batch)
                if batch:
                    self._process(batch)
                metrics.BRIDGE_QUEUE_MESSAGES.set(self._queue.qsize())
                if stop or time.monotonic() >= next_flush:
                    self._flush_seen()
                    next_flush = time.monotonic() + self._seen_flush_seconds
                if stop or self._abandon.is_set():
                    return
        finally:
            connection.close()
            self._stop_writer()

    def _drain_into(self, batch: list[InboundMessage]) -> bool:
        """Add what is already queued, up to the batch size; True if the stop marker came."""
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(cast(InboundMessage, item))
        return False

    def _process(self, batch: list[InboundMessage]) -> None:
        """Handle the batch and hand it to the writer (which stores its telemetry and acks)."""
        checked = self._check(batch)
        if checked is not None:
            self._hand_over(checked)

    def _check(self, batch: list[InboundMessage]) -> _Checked | None:
        """Handle every message of the batch in one transaction; None if abandoned.

        Optimistic first: no savepoint per message, which costs two round trips each
        (SAVEPOINT, RELEASE). If any message fails, that transaction is rolled back and the batch is
        handled again with a savepoint around each message, so the failing one is dropped
        alone.
        """
        delay = 0.1
        telemetry = self._dispatcher.telemetry
        careful = False
        while True:
            close_old_connections()
            try:
                self._prepare(batch)
                with transaction.atomic():
                    self._dispatcher.begin(deferred=not careful)
                    handled = [self._handle_one(message, careful=careful) for message in batch]
                    if not careful:
                        self._finish(handled)
                    rows = telemetry.take()
                    confirmed = self._dispatcher.take_confirmed()
                return _Checked(batch, handled, rows, confirmed)
            except _Redo:
                telemetry.discard()
                careful = True
            except _RETRYABLE as exc:
                telemetry.discard()
                if self._abandon.is_set():
                    return None  # not acked: the broker delivers these again after a restart
                self._log.warning("db", "database unavailable, retrying a batch: %s", exc)
                connection.close()
                self._abandon.wait(delay)
                delay = min(delay * 2, 5.0)

    def _finish(self, handled: list[tuple[Outcome, float]]) -> None:
        """Write the batch's deferred reports; mark the events found stored as duplicates."""
        started = time.perf_counter()
        try:
            duplicates = self._dispatcher.finish()
        except _RETRYABLE:
            raise
        except Exception as exc:
            raise _Redo from exc
        for index in duplicates:
            outcome, seconds = handled[index]
            handled[index] = (Outcome(outcome.channel, DUPLICATE), seconds)
        # The write's time, shared by the batch's messages, in their handling time.
        share = (time.perf_counter() - started) / max(len(handled), 1)
        handled[:] = [(outcome, seconds + share) for outcome, seconds in handled]

    def _hand_over(self, checked: _Checked) -> None:
        while not self._abandon.is_set():
            if not self._writer.is_alive():
                raise RuntimeError("the bridge's writer thread died")
            try:
                self._writes.put(checked, timeout=_HAND_OVER_WAIT)
                return
            except queue.Full:
                continue

    def _stop_writer(self) -> None:
        """Let the writer finish what it was handed (or give up once abandoned), then end."""
        self._hand_over_marker()
        while self._writer.is_alive():
            self._writer.join(_HAND_OVER_WAIT)
            if self._abandon.is_set():
                self._writer.join(5)
                return

    def _hand_over_marker(self) -> None:
        while self._writer.is_alive():
            try:
                self._writes.put(_STOP, timeout=_HAND_OVER_WAIT)
                return
            except queue.Full:
                if self._abandon.is_set():
                    return

    # --- writer thread ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            while True:
                item = self._writes.get()
                if item is _STOP or not self._store(cast(_Checked, item)):
                    return
        finally:
            connection.close()

    def _store(self, checked: _Checked) -> bool:
        """Write the batch's telemetry, then ack the batch in order; False once abandoned."""
        delay = 0.1
        while True:
            close_old_connections()
            try:
                with transaction.atomic():
                    self._dispatcher.telemetry.write(checked.rows)
                break
            except _RETRYABLE as exc:
                if self._abandon.is_set():
                    return False  # not acked (nor anything after it): delivered again
                self._log.warning("db", "database unavailable, retrying telemetry: %s", exc)
                connection.close()
                self._abandon.wait(delay)
                delay = min(delay * 2, 5.0)
        self._count(checked.handled)
        self._ack(checked.batch)
        if checked.confirmed:
            try:
                self._confirm(checked.confirmed)
            except Exception:
                # Unconfirmed messages come again and are confirmed then.
                self._log.warning("confirm", "could not confirm messages", exc_info=True)
        return True

    @staticmethod
    def _count(handled: list[tuple[Outcome, float]]) -> None:
        # Counters once per batch and label set, histogram children looked up once.
        results: dict[tuple[str, str], int] = {}
        drops: dict[tuple[str, str], int] = {}
        seconds_by_channel: dict[str, list[float]] = {}
        for outcome, seconds in handled:
            key = (outcome.channel, outcome.result)
            results[key] = results.get(key, 0) + 1
            if outcome.reason:
                key = (outcome.channel, outcome.reason)
                drops[key] = drops.get(key, 0) + 1
            seconds_by_channel.setdefault(outcome.channel, []).append(seconds)
        for (channel, result), n in results.items():
            metrics.BRIDGE_MESSAGES.labels(channel, result).inc(n)
        for (channel, reason), n in drops.items():
            metrics.BRIDGE_DROPPED.labels(channel, reason).inc(n)
        for channel, values in seconds_by_channel.items():
            observe = metrics.BRIDGE_HANDLE_SECONDS.labels(channel).observe
            for value in values:
                observe(value)

    def _prepare(self, batch: list[InboundMessage]) -> None:
        # Before the batch's transaction, in autocommit: a read needs none, and a failure
        # here then cannot abort the batch's (no savepoint, two round trips less a batch).
        try:
            self._dispatcher.prepare(batch)
        except _RETRYABLE:
            raise
        except Exception:
            # Only a shortcut: each message still finds its device on its own.
            self._log.warning("prepare", "could not prefetch a batch's devices", exc_info=True)

    def _handle_one(self, message: InboundMessage, *, careful: bool) -> tuple[Outcome, float]:
        """Handle one message; unless ``careful``, a failure raises _Redo (see _check)."""
        started = time.perf_counter()
        try:
            if not careful or channel_label(message.topic) == Channel.TELEMETRY:
                # Telemetry only reads here (the writer stores its rows), so it needs no
                # savepoint even then.
                outcome = self._dispatcher.handle(message)
            else:
                with transaction.atomic():  # a savepoint: one failing message spares the batch
                    outcome = self._dispatcher.handle(message)
        except _RETRYABLE:
            raise
        except Exception as exc:
            if not careful:
                raise _Redo from exc
            # A bug or a row the database refuses: drop this message (and ack it, or it
            # would come back forever) but keep the bridge running.
            self._log.warning(
                "internal", "failed on a message on %r", message.topic[:200], exc_info=True
            )
            outcome = Outcome(channel_label(message.topic), ERROR, REASON_INTERNAL_ERROR)
        return outcome, time.perf_counter() - started

    def _flush_seen(self) -> None:
        try:
            close_old_connections()
            with transaction.atomic():
                self._dispatcher.flush_seen()
        except Exception:
            self._log.warning("seen", "could not record last_seen_at; retrying", exc_info=True)
