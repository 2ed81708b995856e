"""The agent's local metrics endpoint and telemetry sender: the IO around telemetry.py.

One thread of its own (the update loop in runner.py never waits for it, nor it for the
update loop) reads datagrams from the applications' Unix datagram socket (and the
loopback UDP port when configured), has each judged and tagged by
`telemetry.sample_from_datagram` with the runner's current tags, queues the samples in
a `Batcher`, moves due batches into a bounded `Backlog` and hands the backlog to MQTT
while the link is up, at most `telemetry_max_inflight` unacknowledged QoS 1 messages at
a time (so a broker outage leaves at most that many in paho's memory; the rest waits in
the bounded backlog). A PUBACK only says the broker has a message (after a broker
restart the bridge may not have subscribed yet, and the broker drops it), so each
payload carries a random `batch_id` and is held (`telemetry.Unconfirmed`, in memory)
and sent again, the same bytes, until the server names it on `acks`; the server stores
a payload once however often it comes. Counters are written to metrics-stats.json for
`fleet-agent status`. Nothing an application sends can stop this thread: each datagram is judged on
its own, and an unexpected error is logged and counted, never raised.
"""

import contextlib
import json
import logging
import os
import secrets
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Protocol

from device_agent.config import AgentConfig, Layout
from device_agent.metrics_client import unix_address
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import parse_acks
from device_agent.telemetry import (
    MAX_DATAGRAM_BYTES,
    Backlog,
    Batcher,
    BatchPolicy,
    ModelTags,
    Payload,
    Refusal,
    TelemetryCounters,
    Unconfirmed,
    sample_from_datagram,
)

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 5.0
# The longest the thread sleeps: how late it notices `stop`.
IDLE_S = 0.5
# At most this many datagrams per socket before the thread looks at its batches again.
READ_BURST = 256
# Confirmed ids waiting for the thread at most (beyond, more are ignored: each costs only
# one more send of its batch).
MAX_WAITING_CONFIRMATIONS = 10_000


class TelemetryOut(Protocol):
    """Where encoded `telemetry` payloads go (MQTT in the agent, a list in tests)."""

    def ready(self) -> bool:
        """Whether a payload handed over now would go out (the link is connected)."""
        ...

    def send(self, payload: bytes, on_ack: Callable[[], None]) -> bool:
        """Hand over one payload; `on_ack` once the broker has it. False: not taken."""
        ...


def _bind_unix(path: Path, mode: int) -> socket.socket:
    """A Unix datagram socket at `path`; a stale socket file there is replaced, any other
    file is left alone (OSError)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with unix_address(path) as address:
            sock.bind(address)
        os.chmod(path, mode)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_udp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", port))  # loopback only: the device's own applications
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class MetricsService:
    """The metrics socket(s), the batcher, the backlog and the sender, on one thread."""

    def __init__(
        self,
        *,
        layout: Layout,
        config: AgentConfig,
        tags: Callable[[], Mapping[str, ModelTags]],
        out: TelemetryOut,
        clock: Callable[[], datetime],
        stop: threading.Event | None = None,
        confirm: bool = True,
        unconfirmed: Unconfirmed | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`confirm`: give each payload a batch_id and send it again until the server
        confirms it (the bridge must know batch_id: docs/protocol.md). `monotonic` is
        the clock of batching and sending again."""
        self.layout = layout
        self.config = config
        self.tags = tags
        self.out = out
        self.clock = clock
        self.stop = stop or threading.Event()
        self._now = monotonic
        self.batcher = Batcher(
            BatchPolicy(
                max_samples=config.telemetry_batch_samples,
                max_age_s=float(config.telemetry_batch_seconds),
                max_queued=config.telemetry_max_queued,
            ),
            new_id=(lambda: secrets.token_hex(16)) if confirm else None,
        )
        self.backlog = Backlog(config.telemetry_backlog_bytes)
        if unconfirmed is None:  # (an empty one is falsy)
            unconfirmed = Unconfirmed(max_bytes=config.telemetry_backlog_bytes)
        self.unconfirmed = unconfirmed
        # Written by paho's thread under _lock, taken by this one.
        self._confirmations: list[str] = []
        self._reconnected = False
        self.counters = TelemetryCounters()
        self.errors = 0
        self.socket_path = config.metrics_socket_path(layout)
        self._selector = selectors.DefaultSelector()
        self._sockets: list[socket.socket] = []
        self._inflight = 0
        self._acked = 0  # written by paho's thread (an int += under the GIL), read here
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stats_written = 0.0
        self._stats_last: dict[str, object] | None = None

    # --- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Bind the configured endpoints. One that cannot be bound is logged and left
        out: telemetry must never keep the agent from updating models."""
        endpoints: list[tuple[str, Callable[[], socket.socket]]] = []
        path = self.socket_path
        if path is not None:
            mode = int(self.config.metrics_socket_mode, 8)
            endpoints.append((str(path), lambda: _bind_unix(path, mode)))
        port = self.config.metrics_udp_port
        if port is not None:
            endpoints.append((f"udp 127.0.0.1:{port}", lambda: _bind_udp(port)))
        for name, bind in endpoints:
            try:
                sock = bind()
            except OSError as exc:
                log.error("metrics endpoint %s not available: %s", name, exc)
                continue
            self._sockets.append(sock)
            self._selector.register(sock, selectors.EVENT_READ)
            log.info("metrics endpoint listening on %s", name)

    def start(self) -> None:
        """open(), then run() on a daemon thread."""
        self.open()
        self._thread = threading.Thread(target=self._run_logged, name="metrics", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread, send what is queued while the link allows (up to `timeout`),
        remove the socket file."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 5.0)
        self.drain(timeout)
        self._write_stats(force=True)
        for sock in self._sockets:
            self._selector.unregister(sock)
            sock.close()
        self._sockets.clear()
        self._selector.close()
        if self.socket_path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                    self.socket_path.unlink()

    # --- the loop --------------------------------------------------------------------

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception("the metrics thread stopped on an error")

    def run(self) -> None:
        while not self.stop.is_set():
            self.step(self._timeout())

    def step(self, timeout: float) -> None:
        """Wait up to `timeout` for datagrams, then read them, flush due batches, send."""
        try:
            ready = self._selector.select(timeout) if self._sockets else []
            if not self._sockets:
                self.stop.wait(timeout)
            for key, _ in ready:
                self._read(key.fileobj)  # type: ignore[arg-type]
            self.backlog.extend(self.batcher.take_due(self._now()))
            self.pump()
            self._write_stats()
        except Exception:
            # A bug here must not take the agent down, nor spin: count, log, go on.
            self.errors += 1
            log.exception("telemetry step failed")
            self.stop.wait(1.0)

    def _timeout(self) -> float:
        now = self._now()
        timeout = IDLE_S
        for due in (self.batcher.next_due(), self.unconfirmed.next_due()):
            if due is not None:
                timeout = min(timeout, due - now)
        return max(timeout, 0.0)

    def _read(self, sock: socket.socket) -> None:
        for _ in range(READ_BURST):
            try:
                data = sock.recv(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            self.ingest(data)

    def ingest(self, data: bytes) -> bool:
        """Judge one datagram and queue its sample; False when it was refused."""
        counters = self.counters
        counters.received += 1
        outcome = sample_from_datagram(data, tags=self.tags(), now=self.clock())
        if isinstance(outcome, Refusal):
            counters.refuse(outcome)
            log.debug("refused a metrics datagram: %s", outcome)
            return False
        if not self.batcher.add(outcome, self._now()):
            return False
        counters.accepted += 1
        return True

    # --- sending ---------------------------------------------------------------------

    def _on_ack(self) -> None:
        with self._lock:
            self._acked += 1

    def _in_flight(self) -> int:
        with self._lock:
            acked, self._acked = self._acked, 0
        self._inflight = max(0, self._inflight - acked)
        self.counters.acked_payloads += acked
        return self._inflight

    def on_acks(self, payload: bytes) -> None:
        """An `acks` message arrived (paho's thread): the batch ids it names are confirmed."""
        try:
            ack = parse_acks(payload)
        except ProtocolError as exc:
            # DEBUG: the event delivery, which reads every acks message too, warns.
            log.debug("ignored a malformed acks message: %s", exc)
            return
        if ack.batch_ids:
            with self._lock:
                if len(self._confirmations) < MAX_WAITING_CONFIRMATIONS:
                    self._confirmations.extend(ack.batch_ids)

    def on_connected(self) -> None:
        """After a (re)connection (paho's thread): what is unconfirmed goes again soon."""
        with self._lock:
            self._reconnected = True

    def _take_confirmations(self, now: float) -> None:
        with self._lock:
            confirmed, self._confirmations = self._confirmations, []
            reconnected, self._reconnected = self._reconnected, False
        if reconnected:
            self.unconfirmed.reconnected(now)
        if confirmed:
            self.unconfirmed.confirm(confirmed)

    def pump(self) -> None:
        """Hand payloads to the link while it is up and the window has room: first those
        unconfirmed whose time to go again has come, then the backlog's."""
        now = self._now()
        self._take_confirmations(now)
        if not self.out.ready():
            return
        again = self.unconfirmed.due(now)
        qos1 = self.config.telemetry_qos > 0
        while self.out.ready():
            if qos1 and self._in_flight() >= self.config.telemetry_max_inflight:
                return
            resend = bool(again)
            payload = again.pop(0) if again else self.backlog.pop()
            if payload is None:
                return
            if not self._send(payload, resend=resend):
                if not resend:
                    self.backlog.push_back(payload)
                return
            if resend:
                log.info("sending unconfirmed telemetry %s again", payload.batch_id)
            for dropped in self.unconfirmed.sent(payload, now):
                log.warning(
                    "more than %d telemetry messages or %d bytes unconfirmed; dropped the "
                    "oldest (%d samples; %d messages dropped so far)",
                    self.unconfirmed.max_payloads,
                    self.unconfirmed.max_bytes,
                    dropped.samples,
                    self.unconfirmed.dropped_payloads,
                )

    def _send(self, payload: Payload, *, resend: bool = False) -> bool:
        try:
            taken = self.out.send(payload.data, self._on_ack)
        except Exception:
            log.exception("could not hand telemetry to MQTT")
            taken = False
        if taken:
            self._inflight += 1
            if not resend:
                self.counters.sent_payloads += 1
                self.counters.sent_samples += payload.samples
        return taken

    def drain(self, timeout: float) -> bool:
        """Batch everything queued and send it while the link is up, until the broker
        acknowledged it all and the server confirmed it, or `timeout` passed. True when
        nothing is left."""
        self.backlog.extend(self.batcher.take_due(self._now(), everything=True))
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if not len(self.backlog) and self._in_flight() == 0 and not len(self.unconfirmed):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # --- stats -----------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """The counters and queue sizes, as `fleet-agent status` shows them."""
        counters = self.counters
        self._in_flight()
        return {
            "socket": None if self.socket_path is None else str(self.socket_path),
            "udp_port": self.config.metrics_udp_port,
            "received": counters.received,
            "accepted": counters.accepted,
            "refused": dict(counters.refused),
            "dropped": {
                "queue_full": self.batcher.dropped,
                "backlog_full": self.backlog.dropped_samples,
                "too_large": self.batcher.unsendable,
                "unconfirmed_full": self.unconfirmed.dropped_samples,
            },
            "queued_samples": self.batcher.queued,
            "backlog_payloads": len(self.backlog),
            "backlog_bytes": self.backlog.bytes,
            "in_flight": self._inflight,
            "sent_payloads": counters.sent_payloads,
            "sent_samples": counters.sent_samples,
            "acked_payloads": counters.acked_payloads,
            "unconfirmed_payloads": len(self.unconfirmed),
            "unconfirmed_bytes": self.unconfirmed.bytes,
            "resent_payloads": self.unconfirmed.resent_payloads,
            "confirmed_payloads": self.unconfirmed.confirmed_payloads,
            "errors": self.errors,
        }

    def _write_stats(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._stats_written < STATS_INTERVAL_S:
            return
        self._stats_written = now
        stats = self.stats()
        if stats == self._stats_last and not force:
            return
        self._stats_last = stats
        # Counters, not state: a plain rename (no fsync) keeps a reader from seeing half
        # a file without wearing the device's flash every few seconds.
        path = self.layout.metrics_stats
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps({**stats, "written_at": self.clock().isoformat()}))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not write %s: %s", path, exc)
