"""An agent's MQTT link wired as `fleet-agent run` wires it, for tests of the parts that
confirm deliveries end to end (event delivery, held telemetry): connects are counted, and
the connect and `acks` callbacks go to the part set as `receiver`."""

import threading
from typing import Protocol

from device_agent.mqtt import MqttLink


class Receiver(Protocol):
    def on_connected(self) -> None: ...

    def on_acks(self, payload: bytes) -> None: ...


class CountingLink:
    def __init__(self, device_id: str, port: int, protocol: str) -> None:
        self.connects = 0
        self.connected = threading.Condition()
        self.receiver: Receiver | None = None
        self.link = MqttLink(
            broker_url=f"mqtt://127.0.0.1:{port}",
            device_id=device_id,
            tls=None,
            on_desired=lambda payload: None,
            on_connected=self._on_connected,
            on_acks=self._on_acks,
            protocol=protocol,
        )

    def _on_connected(self) -> None:
        if self.receiver is not None:
            self.receiver.on_connected()
        with self.connected:
            self.connects += 1
            self.connected.notify_all()

    def _on_acks(self, payload: bytes) -> None:
        if self.receiver is not None:
            self.receiver.on_acks(payload)

    def wait_connects(self, n: int, timeout: float) -> bool:
        with self.connected:
            return self.connected.wait_for(lambda: self.connects >= n, timeout)
