"""Every telemetry sample reaches the database exactly once across a broker crash, under
MQTT 3.1.1 and 5, when the agent reconnects before the bridge has subscribed again.

The broker runs without persistence, so its restart loses the bridge's subscriptions (as
Mosquitto 2.0 loses shared subscriptions over any restart): telemetry published after the
agent is back and before the bridge is would be dropped by the broker, with a PUBACK
(0x10 under MQTT 5) that the agent used to take for delivery. The agent holds each batch
and sends it again until the bridge confirms its `batch_id` on `acks`
(device_agent/metrics_server.py); the bridge stores a payload once.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from agent_link import CountingLink
from bridge_harness import bridge_config, make_device, wait_until
from mqtt_broker import MosquittoBroker

from device_agent.config import AgentConfig, Layout
from device_agent.metrics_client import report
from device_agent.metrics_server import MetricsService
from device_agent.mqtt_adapters import MqttTelemetryOut
from device_agent.telemetry import ModelTags, Unconfirmed
from fleet.bridge.runner import Bridge
from telemetry.ingest import TelemetryIngest
from telemetry.models import Sample

pytestmark = pytest.mark.django_db(transaction=True)

DEVICE = "dev-telemetry-restart"
TAGS = {"kws": ModelTags(version="1.4.0", rollout_id=None, arm=None)}


def _stored() -> list[float]:
    return sorted(
        Sample.objects.filter(device__device_id=DEVICE, metric="seq").values_list(
            "value", flat=True
        )
    )


class Agent:
    """The agent's MQTT link and metrics service, wired as `fleet-agent run` wires them."""

    def __init__(self, directory: Path, port: int, protocol: str) -> None:
        self.mqtt = CountingLink(DEVICE, port, protocol)
        self.link = self.mqtt.link
        layout = Layout(directory)
        layout.make_dirs()
        config = AgentConfig(
            device_id=DEVICE,
            hardware="linux-x86_64-fp32",
            server_url="http://127.0.0.1:9",
            tuf_url="http://127.0.0.1:9/tuf/",
            broker_url=f"mqtt://127.0.0.1:{port}",
            mqtt_protocol=protocol,
            telemetry_batch_samples=5,
            telemetry_batch_seconds=0.2,
        )
        self.metrics = MetricsService(
            layout=layout,
            config=config,
            tags=lambda: TAGS,
            out=MqttTelemetryOut(self.link, config.telemetry_qos),
            clock=lambda: datetime.now(UTC),
            unconfirmed=Unconfirmed(max_bytes=1 << 20, first_s=0.5, max_s=2.0),
        )
        self.mqtt.receiver = self.metrics

    def start(self) -> None:
        self.link.start()
        self.metrics.start()

    def wait_connects(self, n: int, timeout: float) -> bool:
        return self.mqtt.wait_connects(n, timeout)

    def send(self, seqs: range) -> None:
        """Hand samples to the agent as its application does, and wait until they are
        batched and handed to the link (or to the backlog while it is down)."""
        metrics = self.metrics
        assert metrics is not None
        for seq in seqs:
            before = metrics.counters.accepted
            ts = (datetime.now(UTC) - timedelta(seconds=1)).timestamp()
            assert report("kws", {"seq": float(seq)}, socket_path=metrics.socket_path, ts=ts)
            assert wait_until(lambda b=before: metrics.counters.accepted > b, 10)  # type: ignore[misc]
        assert wait_until(lambda: metrics.batcher.queued == 0, 10)

    def confirmed(self) -> bool:
        """Whether every sample accepted went out and the server confirmed every payload.
        (Counters, not queue lengths: a payload between the queues is in neither.)"""
        metrics = self.metrics
        assert metrics is not None
        counters = metrics.counters
        return (
            counters.sent_samples == counters.accepted
            and metrics.unconfirmed.confirmed_payloads == counters.sent_payloads
        )

    def stop(self) -> None:
        self.metrics.close(timeout=1.0)
        self.link.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_telemetry_is_stored_once_across_a_broker_crash_the_agent_returns_from_first(
    tmp_path: Path, protocol: str
) -> None:
    # given a broker without persistence, the bridge (slow to reconnect) and an agent
    broker = MosquittoBroker(tmp_path / "mosquitto", persistence=False)
    make_device(DEVICE)
    ingest = TelemetryIngest(
        max_age=timedelta(days=1),
        max_future=timedelta(minutes=10),
        require_known_model=False,
        observe_models=False,
    )
    # (10 s: the agent's return and its sends must fit in the gap on a loaded machine)
    bridge = Bridge(
        bridge_config(broker.port, reconnect_min_seconds=10, reconnect_max_seconds=10),
        telemetry=ingest,
    )
    agent = Agent(tmp_path / "agent", broker.port, protocol)
    bridge.start()
    try:
        assert bridge.wait_subscribed(10), "the bridge did not subscribe"
        agent.start()
        assert agent.wait_connects(1, 10), "the agent did not connect"
        agent.send(range(0, 10))
        assert wait_until(agent.confirmed, 20), "telemetry was not confirmed"
        assert _stored() == [float(i) for i in range(10)]

        # when the broker is killed, the application reports meanwhile, the broker returns
        broker.kill()
        assert wait_until(lambda: not agent.link.connected.is_set(), 10)
        agent.send(range(10, 20))
        broker.start()
        # ... the agent is back first and sends more before the bridge has subscribed
        assert agent.wait_connects(2, 20), "the agent did not reconnect"
        assert not bridge.connection.subscribed.is_set(), "the bridge came back first"
        agent.send(range(20, 30))
        metrics = agent.metrics
        assert metrics is not None
        assert wait_until(lambda: metrics.counters.sent_samples == 30, 10)
        assert not bridge.connection.subscribed.is_set(), "the bridge came back too soon"

        # then once the bridge is back every batch is confirmed and stored exactly once
        assert bridge.wait_subscribed(20), "the bridge did not subscribe again"
        assert wait_until(agent.confirmed, 60), (
            f"unconfirmed: {len(metrics.unconfirmed)}, stored: {_stored()}"
        )
        # (a control batch, confirmed after all the others were, closes the window for a
        # late copy of them)
        agent.send(range(30, 31))
        assert wait_until(agent.confirmed, 30)
        assert _stored() == [float(i) for i in range(31)]
        assert cast(int, metrics.stats()["resent_payloads"]) > 0  # the broker did drop some
    finally:
        agent.stop()
        bridge.stop()
        broker.stop()
