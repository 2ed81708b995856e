"""The agent's MQTT link (the only agent module that imports paho).

One paho 2.x client (callback API VERSION2) per device: client id = device id, LWT
`status` = offline (retained), `status` = online (retained) on every connect, the
device's own `desired` topic (and `acks`, when the caller takes them) subscribed in
on_connect (so it is re-subscribed after every reconnect and the retained desired state
arrives again). `mqtts://` URLs use
TLS with the enrollment certificate as client certificate; `mqtt://` is plain.

MQTT 3.1.1 by default (the embedded amqtt broker speaks nothing else); with protocol
"5" the broker also says when a QoS 1 message reached no subscriber (PUBACK reason
0x10), as when Mosquitto restarted and the bridge has not subscribed again yet. An
`events` message answered so is kept and published again, with backoff, until one is
subscribed (flush() waits for that too). That only shortens the gap: what makes an
event or a telemetry message reach the control plane under either protocol is the
server's confirmation on `acks` (device_agent/delivery.py, metrics_server.py).
"""

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.protocol.messages import DeviceStatus, Presence
from device_agent.protocol.topics import CHANNEL_QOS, RETAINED_CHANNELS, Channel, topic_for
from device_agent.testhooks import sent

log = logging.getLogger(__name__)

KEEPALIVE_S = 30
ACKED_EARLY_KEPT = 256
PROTOCOLS = {"3.1.1": paho.MQTTv311, "5": paho.MQTTv5}
# PUBACK reason 0x10 (MQTT 5): accepted, but no subscription matched.
NO_MATCHING_SUBSCRIBERS = 0x10
# Channels whose messages are published again when nobody was subscribed.
REDELIVERED_CHANNELS = frozenset({Channel.EVENTS})
REDELIVER_FIRST_S = 1.0
REDELIVER_MAX_S = 60.0
REDELIVER_KEPT = 256  # messages waiting to be published again; the oldest go first


@dataclass(frozen=True, slots=True)
class _Redelivery:
    channel: Channel
    payload: bytes
    attempt: int


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host[:1883] or mqtts://host[:8883]."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker URL {url!r} must be mqtt://host[:port] or mqtts://host[:port]")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


class MqttLink:
    """Connects in the background, hands `desired` payloads to a callback, publishes."""

    def __init__(
        self,
        *,
        broker_url: str,
        device_id: str,
        tls: TlsFiles | None,
        on_desired: Callable[[bytes], None],
        on_connected: Callable[[], None] = lambda: None,
        on_acks: Callable[[bytes], None] | None = None,
        protocol: str = "3.1.1",
        redeliver_first_s: float = REDELIVER_FIRST_S,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"MQTT protocol {protocol!r} must be one of {sorted(PROTOCOLS)}")
        self.host, self.port, use_tls = parse_broker_url(broker_url)
        self.protocol = protocol
        self.redeliver_first_s = redeliver_first_s
        self.device_id = device_id
        self.on_desired = on_desired
        self.on_connected = on_connected
        self.connected = threading.Event()
        self.desired_topic = topic_for(device_id, Channel.DESIRED)
        self.on_acks = on_acks
        self.acks_topic = topic_for(device_id, Channel.ACKS)
        # QoS 1 message ids sent but not yet acknowledged (PUBACK), and the latest
        # acknowledgements of ids not (yet) in it: one can beat publish() back to its
        # caller, QoS 0 sends report their id too. See flush().
        # (The value of an early acknowledgement: whether it said "no subscribers".)
        self._acks = threading.Condition()
        self._unacked: set[int] = set()
        self._acked_early: dict[int, bool] = {}
        # QoS 1 messages whose sender wants to hear of the PUBACK (telemetry), not flushed.
        self._on_ack: dict[int, Callable[[], None]] = {}
        # Unacknowledged messages of REDELIVERED_CHANNELS (MQTT 5), and those waiting for
        # their next attempt (flush() waits for them as well).
        self._redeliverable: dict[int, _Redelivery] = {}
        self._waiting: dict[int, threading.Timer] = {}
        self._waiting_seq = 0
        self._republishing = 0
        self._stopping = False
        if protocol == "5":
            # MQTT 5 has clean_start at connect and a session expiry of 0 by default.
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=device_id, protocol=paho.MQTTv5
            )
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=device_id,
                protocol=paho.MQTTv311,
                clean_session=True,
            )
        client.will_set(
            topic_for(device_id, Channel.STATUS),
            DeviceStatus(status=Presence.OFFLINE).to_json(),
            qos=CHANNEL_QOS[Channel.STATUS],
            retain=True,
        )
        if use_tls:
            if tls is None:
                raise ValueError("mqtts:// needs the CA, certificate and key from enrollment")
            client.tls_set(
                ca_certs=str(tls.ca),
                certfile=str(tls.cert),
                keyfile=str(tls.key),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self.client = client

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Say offline (a clean disconnect does not fire the LWT), then disconnect."""
        with self._acks:
            self._stopping = True
            for timer in self._waiting.values():
                timer.cancel()
            self._waiting.clear()
            self._acks.notify_all()
        if self.connected.is_set():
            info = self.publish(Channel.STATUS, DeviceStatus(status=Presence.OFFLINE).to_json())
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    def publish(
        self,
        channel: Channel,
        payload: bytes,
        *,
        qos: int | None = None,
        on_ack: Callable[[], None] | None = None,
    ) -> paho.MQTTMessageInfo:
        """Publish on this device's `channel` topic with the channel's QoS (or `qos`) and
        retain flag.

        QoS 1 messages published while offline are queued and sent after reconnecting.
        Without `on_ack`, flush() waits for their acknowledgement; with it, they are the
        caller's business: `on_ack` is called (on paho's thread) once the broker has one.
        """
        qos = CHANNEL_QOS[channel] if qos is None else qos
        if channel in (Channel.EVENTS, Channel.TELEMETRY):
            sent(self.device_id, channel, payload)
        return self._publish(channel, payload, qos=qos, on_ack=on_ack, attempt=0)

    def _publish(
        self,
        channel: Channel,
        payload: bytes,
        *,
        qos: int,
        on_ack: Callable[[], None] | None,
        attempt: int,
    ) -> paho.MQTTMessageInfo:
        info = self.client.publish(
            topic_for(self.device_id, channel),
            payload,
            qos=qos,
            retain=channel in RETAINED_CHANNELS,
        )
        acked = False
        if qos > 0 and info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            redelivery = None
            if on_ack is None and self.protocol == "5" and channel in REDELIVERED_CHANNELS:
                redelivery = _Redelivery(channel, payload, attempt)
            with self._acks:
                if info.mid in self._acked_early:
                    # the PUBACK was quicker than us
                    unrouted = self._acked_early.pop(info.mid)
                    acked = True
                    if unrouted and redelivery is not None:
                        self._redeliver_later(redelivery)
                elif on_ack is not None:
                    self._on_ack[info.mid] = on_ack
                else:
                    self._unacked.add(info.mid)
                    if redelivery is not None:
                        self._redeliverable[info.mid] = redelivery
        if acked and on_ack is not None:
            on_ack()
        return info

    def _redeliver_later(self, redelivery: _Redelivery) -> None:
        # Called with self._acks held. A timer thread, not paho's: on_publish runs under
        # paho's message lock, which publish() takes too.
        if self._stopping:
            return
        if len(self._waiting) >= REDELIVER_KEPT:
            oldest = next(iter(self._waiting))
            self._waiting.pop(oldest).cancel()
            log.warning("too many messages wait for a subscriber; dropped the oldest")
        delay = min(self.redeliver_first_s * 2**redelivery.attempt, REDELIVER_MAX_S)
        log.warning(
            "nobody is subscribed to %s (PUBACK 0x10); publishing the message again in %.1fs",
            redelivery.channel,
            delay,
        )
        self._waiting_seq += 1
        key = self._waiting_seq
        timer = threading.Timer(delay, self._redeliver, args=(key, redelivery))
        timer.daemon = True
        self._waiting[key] = timer
        timer.start()

    def _redeliver(self, key: int, redelivery: _Redelivery) -> None:
        with self._acks:
            if self._waiting.pop(key, None) is None:  # cancelled: stopping, or dropped
                return
            # Counted until the new message id is in _unacked: flush() never sees a gap.
            self._republishing += 1
        try:
            self._publish(
                redelivery.channel,
                redelivery.payload,
                qos=CHANNEL_QOS[redelivery.channel],
                on_ack=None,
                attempt=redelivery.attempt + 1,
            )
        except Exception:
            log.exception("could not publish a %s message again", redelivery.channel)
        finally:
            with self._acks:
                self._republishing -= 1
                self._acks.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged every QoS 1 message published so far.

        True when it did, False after `timeout`. paho's MQTTMessageInfo cannot tell
        (a message queued while offline keeps its "no connection" code even after it
        was sent and acknowledged), so acknowledgements are counted in on_publish.
        """
        deadline = time.monotonic() + timeout
        with self._acks:
            while self._unacked or self._waiting or self._republishing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._acks.wait(remaining)
        return True

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        log.info("connected to %s:%d", self.host, self.port)
        topics = [(self.desired_topic, CHANNEL_QOS[Channel.DESIRED])]
        if self.on_acks is not None:
            topics.append((self.acks_topic, CHANNEL_QOS[Channel.ACKS]))
        client.subscribe(topics)
        self.publish(Channel.STATUS, DeviceStatus(status=Presence.ONLINE).to_json())
        self.connected.set()
        try:
            self.on_connected()
        except Exception:
            log.exception("on_connected callback failed")

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self.connected.clear()
        log.info("disconnected from the broker: %s", reason_code)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        unrouted = getattr(reason_code, "value", 0) == NO_MATCHING_SUBSCRIBERS
        with self._acks:
            callback = self._on_ack.pop(mid, None)
            if callback is None:
                if mid in self._unacked:
                    self._unacked.discard(mid)
                    redelivery = self._redeliverable.pop(mid, None)
                    if unrouted and redelivery is not None:
                        self._redeliver_later(redelivery)
                    self._acks.notify_all()
                    return
                self._acked_early[mid] = unrouted
                if len(self._acked_early) > ACKED_EARLY_KEPT:
                    # Ids of QoS 0 sends nobody claims: drop the oldest long before paho's
                    # 16-bit message ids wrap around to them.
                    del self._acked_early[next(iter(self._acked_early))]
                return
        try:
            callback()
        except Exception:
            log.exception("acknowledgement callback failed")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic == self.desired_topic:
            callback = self.on_desired
        elif message.topic == self.acks_topic and self.on_acks is not None:
            callback = self.on_acks
        else:
            return
        try:
            callback(bytes(message.payload))
        except Exception:
            log.exception("%s callback failed", message.topic.rpartition("/")[2])
