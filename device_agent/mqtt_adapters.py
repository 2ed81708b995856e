"""The MQTT link seen as the runner's Publisher and the metrics service's TelemetryOut."""

from collections.abc import Callable

from device_agent.config import Layout
from device_agent.delivery import RESEND_FIRST_S, RESEND_MAX_S, EventDelivery, EventOutbox
from device_agent.mqtt import MqttLink
from device_agent.protocol.messages import ReportedState, UpdateEvent
from device_agent.protocol.topics import Channel


class MqttPublisher:
    """Events and state over MQTT (QoS 1). Events go through `delivery`, which keeps each
    on disk and sends it again until the server confirms it (device_agent/delivery.py)."""

    def __init__(self, link: MqttLink, delivery: EventDelivery) -> None:
        self.link = link
        self.delivery = delivery

    def event(self, event: UpdateEvent) -> None:
        self.delivery.event(event)

    def state(self, state: ReportedState) -> None:
        self.link.publish(Channel.STATE, state.to_json())


def event_delivery(
    layout: Layout,
    link: MqttLink,
    *,
    first_s: float = RESEND_FIRST_S,
    max_s: float = RESEND_MAX_S,
) -> EventDelivery:
    """The agent's events, from `events.json`, sent on `link`'s `events` topic."""
    return EventDelivery(
        EventOutbox(layout.events),
        send=lambda payload: link.publish(Channel.EVENTS, payload),
        connected=link.connected.is_set,
        first_s=first_s,
        max_s=max_s,
    )


class MqttTelemetryOut:
    """Telemetry payloads over MQTT at the configured QoS (metrics_server.TelemetryOut)."""

    def __init__(self, link: MqttLink, qos: int) -> None:
        self.link = link
        self.qos = qos

    def ready(self) -> bool:
        return self.link.connected.is_set()

    def send(self, payload: bytes, on_ack: Callable[[], None]) -> bool:
        import paho.mqtt.client as paho

        info = self.link.publish(Channel.TELEMETRY, payload, qos=self.qos, on_ack=on_ack)
        if self.qos == 0:
            if info.rc != paho.MQTT_ERR_SUCCESS:
                return False
            on_ack()  # nothing more will come back for QoS 0
            return True
        # Queued by paho while the link dropped: sent (and acknowledged) after reconnecting.
        return info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN)
