"""The bridge process: one MQTT connection, the inbound worker and the outbox, wired up."""

import logging
import threading

from fleet.bridge.client import InboundMessage, MqttConnection
from fleet.bridge.config import BridgeConfig
from fleet.bridge.handlers import Dispatcher, TelemetrySink, bridge_metrics_initialise
from fleet.bridge.outbox import Outbox, OutboxListener
from fleet.bridge.sentinel import SentinelCheck
from fleet.bridge.services import telemetry_sink
from fleet.bridge.worker import InboundWorker
from fleet.bulk import listening_supported
from telemetry import metrics

logger = logging.getLogger(__name__)


class Bridge:
    """Threads: paho's network loop, the inbound worker, the outbox and its listener.

    `start()` returns at once (paho keeps retrying the broker); `stop()` finishes what is
    in flight: the outbox waits for outstanding PUBACKs, the worker stores and
    acknowledges what it has queued, then the client disconnects normally, which keeps
    the persistent session. Messages arriving during the stop are left unacknowledged,
    and the broker delivers them again on the next start.
    """

    def __init__(self, config: BridgeConfig, *, telemetry: TelemetrySink | None = None) -> None:
        self.config = config
        bridge_metrics_initialise()
        self._stopping = threading.Event()
        self._outbox_stop = threading.Event()
        self.sentinel = SentinelCheck()
        self.connection = MqttConnection(
            config,
            on_message=self._on_message,
            on_published=self._on_published,
            on_connected=self.sentinel.start,
            on_sentinel=self._on_sentinel,
        )
        self.worker = InboundWorker(
            dispatcher=Dispatcher(
                telemetry=telemetry or telemetry_sink(),
                device_cache_seconds=config.device_cache_seconds,
            ),
            ack=self.connection.ack,
            queue_size=config.queue_size,
            batch_size=config.batch_size,
            seen_flush_seconds=config.seen_flush_seconds,
            confirm=self.connection.confirm,
        )
        self.outbox = Outbox(
            publisher=self.connection,
            poll_seconds=config.outbox_poll_seconds,
            batch_size=config.outbox_batch_size,
            window=config.outbox_window,
            sentinel=self.sentinel,
        )
        if listening_supported():
            # One bridge of several publishes: the one whose listener holds the lock.
            self.outbox.lead(False)
        self._outbox_thread = threading.Thread(
            target=self.outbox.run, args=(self._outbox_stop,), name="bridge-outbox", daemon=True
        )
        self._listener_thread = threading.Thread(
            target=OutboxListener(on_commit=self.outbox.committed, on_leader=self.outbox.lead).run,
            args=(self._outbox_stop,),
            name="bridge-outbox-listener",
            daemon=True,
        )

    def _on_message(self, message: InboundMessage) -> None:
        if self._stopping.is_set():
            return  # not acked: redelivered to the next run of this session
        self.worker.offer(message)

    def _on_sentinel(self, payload: bytes, retain: bool) -> None:
        self.sentinel.received(payload, retain=retain)

    def _on_published(self, mid: int, ok: bool) -> None:
        self.outbox.on_published(mid, ok)

    def start(self) -> None:
        self.worker.start()
        self._outbox_thread.start()
        self._listener_thread.start()
        self.connection.start()

    def wait_subscribed(self, timeout: float) -> bool:
        """Whether the broker granted the subscriptions within `timeout` seconds."""
        return self.connection.subscribed.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._outbox_stop.set()
        self._outbox_thread.join(timeout)
        self._listener_thread.join(timeout)
        self.worker.stop(timeout)
        self.connection.stop()
        metrics.BRIDGE_CONNECTED.set(0)
        logger.info("bridge stopped")

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set (the management command sets it on SIGTERM/SIGINT)."""
        self.start()
        try:
            while not stop.wait(1.0):
                if not self.worker.alive:
                    raise RuntimeError("the bridge's inbound worker died")
        finally:
            self.stop()
