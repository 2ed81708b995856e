"""The inbound worker: takes messages off paho's network thread, stores them, then acks.

paho's `on_message` only calls `offer()`. The worker thread drains the queue in
batches, handles each message in its own savepoint inside one transaction, and after
the commit PUBACKs the batch in arrival order. A crash before the commit loses
nothing: the broker still holds every unacknowledged QoS 1 message for our session.

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
from collections.abc import Callable
from typing import cast

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
    ERROR,
    REASON_BACKPRESSURE,
    REASON_INTERNAL_ERROR,
    Dispatcher,
    Outcome,
    RateLimitedLog,
    channel_label,
)
from telemetry import metrics

logger = logging.getLogger(__name__)

_STOP = object()
# The database is unreachable or locked: retry the whole batch, do not drop it.
_RETRYABLE = (OperationalError, InterfaceError)


class InboundWorker:
    """One thread that turns queued messages into database rows and acknowledgements."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        ack: Callable[[InboundMessage], bool],
        queue_size: int,
        batch_size: int,
        seen_flush_seconds: float,
    ) -> None:
        self._dispatcher = dispatcher
        self._ack = ack
        self._queue: queue.Queue[object] = queue.Queue()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._seen_flush_seconds = seen_flush_seconds
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-worker", daemon=True)
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
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Handle and acknowledge what is queued now, then end; unacked ones are redelivered."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()  # e.g. the database is down: give up retrying
            self._thread.join(5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

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
        delay = 0.1
        while True:
            close_old_connections()
            try:
                with transaction.atomic():
                    handled = [self._handle_one(message) for message in batch]
                    self._dispatcher.telemetry.flush()
                break
            except _RETRYABLE as exc:
                self._dispatcher.telemetry.discard()
                if self._abandon.is_set():
                    return  # not acked: the broker delivers these again after a restart
                self._log.warning("db", "database unavailable, retrying a batch: %s", exc)
                connection.close()
                self._abandon.wait(delay)
                delay = min(delay * 2, 5.0)
        for message, (outcome, seconds) in zip(batch, handled, strict=True):
            metrics.BRIDGE_MESSAGES.labels(outcome.channel, outcome.result).inc()
            if outcome.reason:
                metrics.BRIDGE_DROPPED.labels(outcome.channel, outcome.reason).inc()
            metrics.BRIDGE_HANDLE_SECONDS.labels(outcome.channel).observe(seconds)
            self._ack(message)

    def _handle_one(self, message: InboundMessage) -> tuple[Outcome, float]:
        started = time.perf_counter()
        try:
            if channel_label(message.topic) == Channel.TELEMETRY:
                # Telemetry only reads here (the sink writes in flush()), so it needs no
                # savepoint: two round trips less per message, ~40 % of the worker's time.
                outcome = self._dispatcher.handle(message)
            else:
                with transaction.atomic():  # a savepoint: one failing message spares the batch
                    outcome = self._dispatcher.handle(message)
        except _RETRYABLE:
            raise
        except Exception:
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
