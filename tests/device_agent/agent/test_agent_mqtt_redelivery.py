"""An `events` message that reached no subscriber (MQTT 5 PUBACK reason 0x10, as after a
Mosquitto restart that lost the bridge's `$share` subscription) is kept and published
again until a subscriber has it; flush() waits for that. Under MQTT 3.1.1 the broker
cannot say so, and the message is gone: that is why the agent can speak 5."""

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.mqtt import MqttLink
from device_agent.protocol.messages import Phase, UpdateEvent, parse_event
from device_agent.protocol.topics import Channel, subscription_filter

DEVICE = "dev-redeliver"


class Bridge:
    """A bridge-like subscriber: MQTT 5, clean start, `$share/bridge/.../events`."""

    def __init__(self, port: int) -> None:
        self.events: list[UpdateEvent] = []
        self.received = threading.Event()
        subscribed = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bridge-like", protocol=paho.MQTTv5
        )

        def on_connect(c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe(subscription_filter(Channel.EVENTS, share_group="bridge"), qos=1)

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            self.events.append(parse_event(bytes(msg.payload)))
            self.received.set()

        client.on_connect = on_connect
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_message = on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        assert subscribed.wait(10), "the bridge could not subscribe"
        self.client = client

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def event(seq: int) -> bytes:
    return UpdateEvent(
        seq=seq,
        rollout_id="r-1",
        model="kws",
        phase=Phase.COMMITTED,
        progress=None,
        code=None,
        detail="",
        ts=datetime.now(UTC).replace(microsecond=0),
    ).to_json()


def connected_link(port: int, protocol: str, connects: list[float] | None = None) -> MqttLink:
    connects = [] if connects is None else connects
    link = MqttLink(
        broker_url=f"mqtt://127.0.0.1:{port}",
        device_id=DEVICE,
        tls=None,
        on_desired=lambda payload: None,
        on_connected=lambda: connects.append(time.monotonic()),
        protocol=protocol,
        redeliver_first_s=0.2,
    )
    link.start()
    assert link.connected.wait(10), "the link did not connect"
    return link


def test_an_event_nobody_received_is_published_again_once_the_bridge_is_back(
    mosquitto: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # given an agent and the bridge on a broker that then restarts: the bridge's
    # clean-start $share subscription is gone, and the bridge is not back yet
    bridge = Bridge(mosquitto.port)
    connects: list[float] = []
    link = connected_link(mosquitto.port, "5", connects)
    try:
        link.publish(Channel.EVENTS, event(1))
        assert link.flush(10)
        assert bridge.received.wait(10)
        bridge.stop()
        mosquitto.restart()
        deadline = time.monotonic() + 30
        while len(connects) < 2:
            assert time.monotonic() < deadline, "the agent did not reconnect"
            time.sleep(0.05)

        # when the agent publishes an update's outcome meanwhile
        caplog.set_level(logging.WARNING, logger="device_agent.mqtt")
        link.publish(Channel.EVENTS, event(2))

        # then the broker answered "no matching subscribers" and the event is still held
        assert wait_for(lambda: "(PUBACK 0x10)" in caplog.text), caplog.text
        assert not link.flush(0)

        # when the bridge is back
        bridge = Bridge(mosquitto.port)

        # then it gets the event, and flush() says the broker has everything
        assert link.flush(30), "the event was not delivered once the bridge was back"
        assert bridge.received.wait(5)
        assert [e.seq for e in bridge.events] == [2]
    finally:
        link.stop()
        bridge.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_with_a_subscriber_nothing_is_published_twice(mosquitto: Any, protocol: str) -> None:
    bridge = Bridge(mosquitto.port)
    link = connected_link(mosquitto.port, protocol)
    try:
        for seq in range(1, 6):
            link.publish(Channel.EVENTS, event(seq))
        assert link.flush(10)
        # a last event, sent once the broker has acknowledged the five: a duplicate of
        # those, sent earlier on the same topic, would reach the bridge before it
        link.publish(Channel.EVENTS, event(6))
        assert link.flush(10)
        assert wait_for(lambda: 6 in [e.seq for e in bridge.events]), bridge.events
        assert [e.seq for e in bridge.events] == [1, 2, 3, 4, 5, 6]
    finally:
        link.stop()
        bridge.stop()


def test_under_mqtt_3_1_1_an_event_nobody_received_is_lost(mosquitto: Any) -> None:
    link = connected_link(mosquitto.port, "3.1.1")
    try:
        link.publish(Channel.EVENTS, event(1))
        assert link.flush(10)  # acknowledged: the broker cannot tell us nobody got it
        bridge = Bridge(mosquitto.port)
        # the bridge receives: the next event reaches it, and the first is not among
        # what it got (nothing kept it for a subscriber that came later)
        link.publish(Channel.EVENTS, event(2))
        assert link.flush(10)
        assert wait_for(lambda: bridge.events), "the subscribed bridge got nothing"
        assert [e.seq for e in bridge.events] == [2]
        bridge.stop()
    finally:
        link.stop()
