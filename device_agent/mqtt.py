"""The agent's MQTT link (the only agent module that imports paho).

One paho 2.x client (callback API VERSION2) per device: client id = device id, LWT
`status` = offline (retained), `status` = online (retained) on every connect, the
device's own `desired` topic subscribed in on_connect (so it is re-subscribed after
every reconnect and the retained desired state arrives again). `mqtts://` URLs use
TLS with the enrollment certificate as client certificate; `mqtt://` is plain.
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

log = logging.getLogger(__name__)

KEEPALIVE_S = 30
ACKED_EARLY_KEPT = 256


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
    ) -> None:
        self.host, self.port, use_tls = parse_broker_url(broker_url)
        self.device_id = device_id
        self.on_desired = on_desired
        self.on_connected = on_connected
        self.connected = threading.Event()
        self.desired_topic = topic_for(device_id, Channel.DESIRED)
        # QoS 1 message ids sent but not yet acknowledged (PUBACK), and the latest
        # acknowledgements of ids not (yet) in it: one can beat publish() back to its
        # caller, QoS 0 sends report their id too. See flush().
        self._acks = threading.Condition()
        self._unacked: set[int] = set()
        self._acked_early: dict[int, None] = {}
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
        if self.connected.is_set():
            info = self.publish(Channel.STATUS, DeviceStatus(status=Presence.OFFLINE).to_json())
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, channel: Channel, payload: bytes) -> paho.MQTTMessageInfo:
        """Publish on this device's `channel` topic with the channel's QoS and retain flag.

        QoS 1 messages published while offline are queued and sent after reconnecting.
        """
        qos = CHANNEL_QOS[channel]
        info = self.client.publish(
            topic_for(self.device_id, channel),
            payload,
            qos=qos,
            retain=channel in RETAINED_CHANNELS,
        )
        if qos > 0 and info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            with self._acks:
                if info.mid in self._acked_early:
                    del self._acked_early[info.mid]  # the PUBACK was quicker than us
                else:
                    self._unacked.add(info.mid)
        return info

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged every QoS 1 message published so far.

        True when it did, False after `timeout`. paho's MQTTMessageInfo cannot tell
        (a message queued while offline keeps its "no connection" code even after it
        was sent and acknowledged), so acknowledgements are counted in on_publish.
        """
        deadline = time.monotonic() + timeout
        with self._acks:
            while self._unacked:
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
        client.subscribe(self.desired_topic, qos=CHANNEL_QOS[Channel.DESIRED])
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
        with self._acks:
            if mid in self._unacked:
                self._unacked.discard(mid)
                self._acks.notify_all()
                return
            self._acked_early[mid] = None
            if len(self._acked_early) > ACKED_EARLY_KEPT:
                # Ids of QoS 0 sends nobody claims: drop the oldest long before paho's
                # 16-bit message ids wrap around to them.
                del self._acked_early[next(iter(self._acked_early))]

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic != self.desired_topic:
            return
        try:
            self.on_desired(bytes(message.payload))
        except Exception:
            log.exception("desired callback failed")
