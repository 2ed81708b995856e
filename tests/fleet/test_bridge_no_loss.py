"""No QoS 1 event is lost or stored twice when the bridge is killed, or the broker
restarted, while a device streams events: the bridge acknowledges a message only after
storing it, its session persists, and storing an event again is a no-op.

"Nothing more arrives" is asserted after a positive control: the device publishes a
marker event after everything else, and once the marker is stored, every message the
broker or the device had to deliver before it (a redelivery, a duplicate) has been
handled: one publisher's QoS 1 messages on one topic arrive in order.
"""

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from bridge_harness import (
    BridgeProcess,
    bridge_config,
    close,
    device_client,
    event_payload,
    make_device,
    publish,
    running_bridge,
    status_payload,
    wait_until,
)
from django.db import OperationalError

from device_agent.protocol.messages import Presence, UpdateEvent
from device_agent.protocol.topics import Channel, topic_for
from fleet.bridge.runner import Bridge
from fleet.models import Device, DeviceEvent

pytestmark = pytest.mark.django_db(transaction=True)

N = 300
MARKER = 10_000
TOPIC = topic_for("dev-1", Channel.EVENTS)


def _stored() -> list[int]:
    return list(DeviceEvent.objects.order_by("seq").values_list("seq", flat=True))


def _publish_events(
    device: mqtt.Client, numbers: range, pause: float = 0.0, sent: list[int] | None = None
) -> None:
    # seq carries the number; every payload is distinct, so the store's dedupe cannot hide a loss.
    for number in numbers:
        device.publish(TOPIC, event_payload(number), qos=1)
        if sent is not None:
            sent.append(number)
        if pause:
            time.sleep(pause)


def _marker_stored() -> bool:
    return DeviceEvent.objects.filter(seq=MARKER).exists()


def test_no_event_is_lost_or_doubled_when_the_bridge_is_killed(
    mosquitto,
    tmp_path: Path,
) -> None:
    # given a bridge process that has subscribed (its status probe landed)
    make_device("dev-1")
    bridge = BridgeProcess(mosquitto, tmp_path / "bridge")
    bridge.start()
    device = device_client(mosquitto.port, "dev-1", persistent=True)
    try:
        publish(device, "dev-1", Channel.STATUS, status_payload(Presence.ONLINE))
        assert wait_until(lambda: Device.objects.get(device_id="dev-1").online, 30), (
            bridge.log_tail()
        )

        # when the device streams events and the bridge is SIGKILLed while storing them
        sent: list[int] = []
        streamer = threading.Thread(
            target=_publish_events, args=(device, range(N), 0.004), kwargs={"sent": sent}
        )
        streamer.start()
        assert wait_until(lambda: DeviceEvent.objects.count() >= 60, 20), bridge.log_tail()
        bridge.kill()
        killed_at = DeviceEvent.objects.count()
        # the stream goes on while no bridge runs
        in_flight = len(sent)
        assert wait_until(lambda: len(sent) >= min(N, in_flight + 30), 20)
        bridge.start()
        streamer.join(30)

        # then every number arrives exactly once
        assert wait_until(lambda: DeviceEvent.objects.count() >= N, 30), bridge.log_tail()
        publish(device, "dev-1", Channel.EVENTS, event_payload(MARKER))
        assert wait_until(_marker_stored, 30), bridge.log_tail()
        assert _stored() == [*range(N), MARKER]
        assert killed_at < N, "the bridge was killed only after it had stored everything"
        assert "fleet_bridge_connected 1.0" in bridge.scrape()
        # and SIGTERM stops it cleanly
        assert bridge.terminate() == 0, bridge.log_tail()
    finally:
        bridge.stop()
        close(device)


class RetryingDevice:
    """Publishes events as the agent must under MQTT 5: a PUBACK with reason 0x10 "no
    matching subscribers" means nobody took the message, so it is published again later.

    Mosquitto 2.0.11 does not restore shared subscriptions from its persistence file: after
    a restart, until the bridge has subscribed again, events on `$share/...` filters are
    PUBACKed with 0x10 and discarded.
    """

    NO_MATCHING_SUBSCRIBERS = 16

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.retried = 0
        self._lock = threading.Lock()
        self._payloads: dict[int, bytes] = {}
        self._early: dict[int, int] = {}  # PUBACKs that came before publish() returned
        self._again: list[bytes] = []
        self._stop = threading.Event()
        self._retrier = threading.Thread(target=self._retry_loop)
        client.on_publish = self._on_publish
        self._retrier.start()

    def publish(self, payload: bytes) -> None:
        # Our lock is never held while calling paho: paho holds its own lock around on_publish.
        mid = self.client.publish(TOPIC, payload, qos=1).mid
        with self._lock:
            reason = self._early.pop(mid, None)
            if reason is None:
                self._payloads[mid] = payload
            elif reason == self.NO_MATCHING_SUBSCRIBERS:
                self._again.append(payload)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            payload = self._payloads.pop(mid, None)
            if payload is None:
                self._early[mid] = reason_code.value
            elif reason_code.value == self.NO_MATCHING_SUBSCRIBERS:
                self._again.append(payload)

    def _retry_loop(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                again, self._again = self._again, []
            self.retried += len(again)
            for payload in again:
                self.publish(payload)

    def stream(self, numbers: range, pause: float) -> None:
        for number in numbers:
            self.publish(event_payload(number))
            time.sleep(pause)

    def close(self) -> None:
        self._stop.set()
        self._retrier.join()


@pytest.mark.parametrize("shared", [True, False], ids=["share", "no-share"])
def test_no_event_is_lost_or_doubled_when_the_broker_restarts(mosquitto, shared: bool) -> None:
    # given a bridge and a device, both with persistent sessions
    make_device("dev-1")
    with running_bridge(mosquitto.port, reconnect_max_seconds=1, use_shared=shared):
        device = RetryingDevice(device_client(mosquitto.port, "dev-1", persistent=True))
        try:
            # when the device streams events and the broker restarts in the middle
            streamer = threading.Thread(target=device.stream, args=(range(N), 0.004))
            streamer.start()
            assert wait_until(lambda: DeviceEvent.objects.count() >= 60, 20)
            mosquitto.restart()
            streamer.join(30)

            # then every number arrives exactly once
            assert wait_until(lambda: DeviceEvent.objects.count() >= N, 30), mosquitto.log_tail()
            device.publish(event_payload(MARKER))
            assert wait_until(_marker_stored, 30), mosquitto.log_tail()
            assert _stored() == [*range(N), MARKER]
            if not shared:
                # a plain persistent subscription survives the restart: nothing to retry
                assert device.retried == 0
        finally:
            device.close()
            close(device.client)


def test_a_message_is_acknowledged_only_once_it_is_stored(mosquitto, monkeypatch) -> None:
    # given a bridge whose database writes fail as if the database were down
    make_device("dev-1")
    attempted: set[int] = set()

    def database_down(*, device: Device, event: UpdateEvent) -> None:
        attempted.add(event.seq)
        raise OperationalError("the database is down")

    def database_down_batch(
        *, reports: list[tuple[Device, UpdateEvent]], news: bool = True
    ) -> list[bool]:
        attempted.update(event.seq for _, event in reports)
        raise OperationalError("the database is down")

    # one by one, and the batch's events together (the bridge's usual path)
    monkeypatch.setattr("fleet.reports.device_event_record", database_down)
    monkeypatch.setattr("fleet.reports.devices_event_record", database_down_batch)
    bridge = Bridge(bridge_config(mosquitto.port, client_id="bridge-ack-test"))
    bridge.start()
    device = device_client(mosquitto.port, "dev-1")
    try:
        assert bridge.wait_subscribed(10)
        for number in range(20):
            publish(device, "dev-1", Channel.EVENTS, event_payload(number))
        # (the first batch is retried with backoff, the others wait behind it, none is acked)
        assert wait_until(lambda: 0 in attempted)
        # when that bridge gives up and a healthy one resumes the same session
        bridge.stop(timeout=0.5)
        monkeypatch.undo()
        with running_bridge(mosquitto.port, client_id="bridge-ack-test"):
            # then the broker delivers every unacknowledged event again
            assert wait_until(lambda: DeviceEvent.objects.count() >= 20, 20)
            publish(device, "dev-1", Channel.EVENTS, event_payload(MARKER))
            assert wait_until(_marker_stored, 20)
            assert _stored() == [*range(20), MARKER]
    finally:
        close(device)
