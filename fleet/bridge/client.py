"""The bridge's MQTT connection: the only module of the control plane that imports paho.

One paho client, MQTT 5 by default, with a persistent session (clean start off, a
session expiry interval, a stable client id) and manual acknowledgements: a QoS 1
message is PUBACKed only when the worker says it is stored, so a bridge that crashes
in between gets the message again from the broker. Everything paho calls back runs on
its network thread and only hands data over; nothing here touches the database.
"""

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from django.utils import timezone
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from device_agent.protocol.messages import MAX_ACK_IDS, EventsAck
from device_agent.protocol.topics import Channel, subscription_filter, topic_for
from fleet.bridge.config import BridgeConfig
from fleet.bridge.sentinel import SENTINEL_TOPIC
from telemetry import metrics

if TYPE_CHECKING:
    from fleet.bridge.handlers import Confirmed

logger = logging.getLogger(__name__)


class _NoDisconnectNoise(logging.Filter):
    # paho 2.2 logs "Client is not connected" at ERROR after every clean disconnect.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOGGER = logging.getLogger("fleet.bridge.paho")
_PAHO_LOGGER.addFilter(_NoDisconnectNoise())

INBOUND_CHANNELS = (Channel.STATE, Channel.EVENTS, Channel.STATUS, Channel.TELEMETRY)
# MQTT 5 says a broker that does not announce Receive Maximum accepts 65535 in flight.
DEFAULT_RECEIVE_MAXIMUM = 65535


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One PUBLISH as the worker sees it; `generation` names the connection it came on."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    generation: int
    received_at: datetime


class MqttConnection:
    """The paho client, its callbacks and a thread-safe `publish` / `ack` for the others.

    `on_message(InboundMessage)` and `on_published(mid, ok)` run on paho's network
    thread: they must only enqueue. So do `on_connected()`, called on every connect once
    the subscriptions are queued, and `on_sentinel(payload, retain)`, which gets the
    messages on SENTINEL_TOPIC (fleet/bridge/sentinel.py) instead of `on_message`.
    """

    def __init__(
        self,
        config: BridgeConfig,
        *,
        on_message: Callable[[InboundMessage], None],
        on_published: Callable[[int, bool], None],
        on_connected: Callable[[], None] | None = None,
        on_sentinel: Callable[[bytes, bool], None] | None = None,
    ) -> None:
        self._config = config
        self._on_message_cb = on_message
        self._on_published_cb = on_published
        self._on_connected_cb = on_connected
        self._on_sentinel_cb = on_sentinel
        self.subscribed = threading.Event()
        self._connected = False
        self._server_receive_maximum = DEFAULT_RECEIVE_MAXIMUM
        # Bumped on every connect and disconnect. A packet id only means something on the
        # connection that delivered it; the ack lock keeps an ack from slipping onto the
        # next connection, where the id may name another message.
        self._generation = 0
        self._ack_lock = threading.Lock()
        # QoS 0 messages of ours (confirmations on `acks`) written by paho but not yet
        # reported written: on_publish reports them too, and they are not the outbox's.
        self._untracked_lock = threading.Lock()
        self._untracked: set[int] = set()
        self._stopping = False
        self._client = self._build()

    # --- set-up ------------------------------------------------------------------------

    def _build(self) -> mqtt.Client:
        config = self._config
        v5 = config.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        client.enable_logger(_PAHO_LOGGER)
        # An exception escaping a callback would end paho's network thread.
        client.suppress_exceptions = True
        client.reconnect_delay_set(config.reconnect_min_seconds, config.reconnect_max_seconds)
        # No limit in paho: the outbox keeps at most `inflight_limit` publishes unacknowledged
        # (it learns the broker's Receive Maximum from CONNACK, after which paho refuses a
        # new limit), so what paho sends again on reconnect, all it holds, is within it.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if config.broker.username:
            client.username_pw_set(config.broker.username, config.broker.password)
        if config.broker.tls:
            client.tls_set(
                ca_certs=config.ca_file or None,
                certfile=config.cert_file or None,
                keyfile=config.key_file or None,
            )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def start(self) -> None:
        """Connect in the background; paho retries with backoff until stop()."""
        config = self._config
        properties = None
        if config.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = config.session_expiry_seconds
            properties.ReceiveMaximum = config.receive_maximum
        self._client.connect_async(
            config.broker.host,
            config.broker.port,
            keepalive=config.keepalive_seconds,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()
        logger.info(
            "bridge %s connecting to %s (MQTT %s, %s)",
            config.client_id,
            config.broker,
            config.protocol,
            f"$share/{config.share_group}" if config.share_group else "no shared subscriptions",
        )

    def stop(self) -> None:
        """Send what is queued (acks included), DISCONNECT normally and end the network thread.

        A normal DISCONNECT keeps the session: the broker queues for us until we return.
        """
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._set_connected(False)

    # --- used by the other threads ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def inflight_limit(self) -> int:
        """How many publishes may await PUBACK at once: ours and the broker's limit (its
        Receive Maximum, known once connected). The outbox keeps to it."""
        return min(self._config.max_inflight, self._server_receive_maximum)

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int | None:
        """Queue a publish; its mid, or None if paho refused it (then nothing was queued)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            logger.warning("publish to %s refused by the MQTT client: %s", topic, info.rc)
            return None
        return info.mid

    def confirm(self, confirmed: Mapping[str, "Confirmed"]) -> int:
        """Publish, per device, the ids of its events and telemetry messages that are
        stored (`acks`, QoS 0); how many messages. A lost one costs the device one more
        send of those messages. `batch_ids` go only to a device that sent one."""
        sent = 0
        for device_id, ids in confirmed.items():
            events, batches = ids.event_ids, ids.batch_ids
            for start in range(0, max(len(events), len(batches)), MAX_ACK_IDS):
                payload = EventsAck(
                    event_ids=tuple(events[start : start + MAX_ACK_IDS]),
                    batch_ids=tuple(batches[start : start + MAX_ACK_IDS]),
                )
                # Held across publish(): paho may report the write before it returns.
                with self._untracked_lock:
                    info = self._client.publish(
                        topic_for(device_id, Channel.ACKS), payload.to_json(), qos=0
                    )
                    if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                        self._untracked.add(info.mid)
                        sent += 1
        return sent

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        """PUBACK the QoS 1 messages the worker has stored; how many. Not those whose
        connection is gone (the broker delivers them again)."""
        with self._ack_lock:
            acked = stale = 0
            for m in messages:
                if m.qos != 1:
                    continue
                if m.generation != self._generation:
                    stale += 1
                    continue
                self._client.ack(m.mid, m.qos)
                acked += 1
        if stale:
            metrics.BRIDGE_ACKS_SKIPPED.inc(stale)
        return acked

    # --- paho callbacks (network thread) ------------------------------------------------

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        metrics.BRIDGE_CONNECTED.set(1 if connected else 0)

    def _next_generation(self) -> None:
        with self._ack_lock:
            self._generation += 1

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._next_generation()
        if reason_code.is_failure:
            logger.error("broker %s refused the bridge: %s", self._config.broker, reason_code)
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", DEFAULT_RECEIVE_MAXIMUM)
        self._server_receive_maximum = int(receive_maximum)
        self._set_connected(True)
        metrics.BRIDGE_CONNECTS.inc()
        logger.info(
            "bridge connected to %s (session present: %s, publishes in flight: %d)",
            self._config.broker,
            flags.session_present,
            self.inflight_limit,
        )
        # Subscribe on every connect: a broker that lost the session (expiry,
        # restart without persistence) would otherwise leave us subscribed to nothing.
        share = self._config.share_group
        topics: list[tuple[str, Any]]
        if self._config.protocol == "5":
            # retainHandling=1: retained state/status only when the subscription is new,
            # not again on every reconnect of a persistent session.
            options = SubscribeOptions(
                qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            topics = [
                (subscription_filter(c, share_group=share), options) for c in INBOUND_CHANNELS
            ]
            if self._on_sentinel_cb is not None:
                # QoS 0 (nothing to acknowledge) and its retained message on every subscribe.
                topics.append((SENTINEL_TOPIC, SubscribeOptions(qos=0)))
        else:
            topics = [(subscription_filter(c, share_group=share), 1) for c in INBOUND_CHANNELS]
            if self._on_sentinel_cb is not None:
                topics.append((SENTINEL_TOPIC, 0))
        client.subscribe(topics)
        if self._on_connected_cb is not None:
            self._on_connected_cb()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        logger.warning("bridge cannot reach broker %s; retrying", self._config.broker)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._next_generation()
        with self._untracked_lock:
            self._untracked.clear()  # paho drops unsent QoS 0 messages with the connection
        was_connected = self._connected
        self._set_connected(False)
        self.subscribed.clear()
        if was_connected and not self._stopping:
            logger.warning("bridge lost broker %s: %s", self._config.broker, reason_code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(code) for code in reason_codes if code.is_failure]
        if failed:
            # e.g. "Shared Subscriptions not supported": run with --no-share for that broker.
            logger.error("broker refused bridge subscriptions: %s", ", ".join(failed))
            return
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = ""  # parse_topic refuses it, and the message is counted as malformed
        if topic == SENTINEL_TOPIC and self._on_sentinel_cb is not None:
            self._on_sentinel_cb(bytes(message.payload), bool(message.retain))
            return
        self._on_message_cb(
            InboundMessage(
                topic=topic,
                payload=bytes(message.payload),
                qos=message.qos,
                retain=message.retain,
                mid=message.mid,
                generation=self._generation,
                received_at=timezone.now(),
            )
        )

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._untracked_lock:
            if mid in self._untracked:
                self._untracked.discard(mid)
                return
        if reason_code.is_failure:
            logger.warning("broker refused publish %d: %s", mid, reason_code)
        self._on_published_cb(mid, not reason_code.is_failure)
