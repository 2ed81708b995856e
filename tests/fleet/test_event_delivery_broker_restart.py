"""Every update event reaches the database exactly once across a broker crash, under MQTT
3.1.1 and 5, when the agent reconnects before the bridge has subscribed again.

The broker runs without persistence, so its restart loses the bridge's `$share`
subscription (as a kill -9 loses what was not autosaved): events published after the
agent is back and before the bridge is would be dropped by the broker. The agent keeps
each event on disk and sends it again until the bridge confirms it on `acks`
(device_agent/delivery.py); the database stores an event once per (device, event_id).
"""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_link import CountingLink
from bridge_harness import bridge_config, make_device, wait_until
from mqtt_broker import MosquittoBroker

from device_agent.config import Layout
from device_agent.mqtt_adapters import event_delivery
from device_agent.protocol.messages import Phase, UpdateEvent
from fleet.bridge.runner import Bridge
from fleet.models import DeviceEvent

pytestmark = pytest.mark.django_db(transaction=True)

DEVICE = "dev-restart"


def _event(seq: int) -> UpdateEvent:
    return UpdateEvent(
        seq=seq,
        rollout_id="r-1",
        model="kws",
        phase=Phase.ACCEPTED,
        progress=None,
        code=None,
        detail="",
        ts=datetime.now(UTC),
    )


def _stored() -> list[int]:
    return sorted(
        DeviceEvent.objects.filter(device__device_id=DEVICE).values_list("seq", flat=True)
    )


class Agent:
    """The agent's MQTT link and event delivery, wired as `fleet-agent run` wires them."""

    def __init__(self, directory: Path, port: int, protocol: str) -> None:
        self.mqtt = CountingLink(DEVICE, port, protocol)
        self.link = self.mqtt.link
        layout = Layout(directory)
        layout.make_dirs()
        self.delivery = event_delivery(layout, self.link, first_s=0.5, max_s=2.0)
        self.mqtt.receiver = self.delivery

    def start(self) -> None:
        self.link.start()
        self.delivery.start()

    def wait_connects(self, n: int, timeout: float) -> bool:
        return self.mqtt.wait_connects(n, timeout)

    def send(self, seqs: range) -> None:
        for seq in seqs:
            self.delivery.event(_event(seq))

    def stop(self) -> None:
        self.delivery.stop()
        self.link.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_events_are_stored_once_across_a_broker_crash_the_agent_returns_from_first(
    tmp_path: Path, protocol: str
) -> None:
    # given a broker without persistence, the bridge (slow to reconnect) and an agent
    broker = MosquittoBroker(tmp_path / "mosquitto", persistence=False)
    make_device(DEVICE)
    bridge = Bridge(bridge_config(broker.port, reconnect_min_seconds=5, reconnect_max_seconds=5))
    agent = Agent(tmp_path / "agent", broker.port, protocol)
    bridge.start()
    try:
        assert bridge.wait_subscribed(10), "the bridge did not subscribe"
        agent.start()
        assert agent.wait_connects(1, 10), "the agent did not connect"
        agent.send(range(1, 6))
        assert agent.delivery.wait_confirmed(20), "events were not confirmed"
        assert _stored() == [1, 2, 3, 4, 5]

        # when the broker is killed, the agent reports meanwhile, the broker comes back
        broker.kill()
        assert wait_until(lambda: not agent.link.connected.is_set(), 10)
        agent.send(range(6, 11))
        broker.start()
        # ... the agent is back first and reports more before the bridge has subscribed
        assert agent.wait_connects(2, 20), "the agent did not reconnect"
        assert not bridge.connection.subscribed.is_set(), "the bridge came back first"
        agent.send(range(11, 16))
        assert not bridge.connection.subscribed.is_set(), "the bridge came back too soon"

        # then once the bridge is back every event is confirmed and stored exactly once
        assert bridge.wait_subscribed(20), "the bridge did not subscribe again"
        assert agent.delivery.wait_confirmed(60), (
            f"unconfirmed: {agent.delivery.unconfirmed()}, stored: {_stored()}"
        )
        # (a control event, confirmed after all the others were, closes the window for
        # a late copy of them)
        agent.send(range(16, 17))
        assert agent.delivery.wait_confirmed(30)
        assert _stored() == list(range(1, 17))
    finally:
        agent.stop()
        bridge.stop()
        broker.stop()
