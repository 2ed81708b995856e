"""Helpers for the bridge tests: device clients, payloads, a bridge in a thread or a process."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from django.db import connection
from django.db.models import F
from mqtt_broker import MosquittoBroker, free_port
from prometheus_client import REGISTRY

from device_agent.protocol.messages import (
    DeviceStatus,
    ModelState,
    Phase,
    Presence,
    ReportedState,
    Slot,
    UpdateEvent,
)
from device_agent.protocol.topics import Channel, topic_for
from fleet.bridge.config import BridgeConfig, BrokerAddress
from fleet.bridge.runner import Bridge
from fleet.director import _outbox_queue
from fleet.models import DesiredState, Device

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def queue_behind() -> None:
    """Queue every desired state that is behind in the outbox, as the director does in the
    transaction that writes one: for tests that write DesiredState rows themselves."""
    _outbox_queue(
        list(DesiredState.objects.filter(published_seq__lt=F("seq")).values_list("pk", "seq"))
    )


def make_device(device_id: str, **fields: object) -> Device:
    return Device.objects.create(device_id=device_id, hardware="linux-x86_64-fp32", **fields)


# --- payloads ---------------------------------------------------------------------------


TS = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def event_payload(
    seq: int, *, phase: Phase = Phase.DOWNLOADING, progress: int | None = 50
) -> bytes:
    return UpdateEvent(
        seq=seq,
        rollout_id="r-9",
        model="kws",
        phase=phase,
        progress=progress,
        code=None,
        detail="",
        ts=TS,
    ).to_json()


def state_payload(*, last_seq: int = 7, version: str = "1.4.0") -> bytes:
    return ReportedState(
        agent_version="0.3.1",
        hardware="linux-x86_64-fp32",
        models=(
            ModelState(
                name="kws", version=version, release_counter=14, slot=Slot.B, status=Phase.COMMITTED
            ),
        ),
        last_seq=last_seq,
    ).to_json()


def status_payload(presence: Presence) -> bytes:
    return DeviceStatus(status=presence).to_json()


# --- MQTT clients ---------------------------------------------------------------------------


def device_client(
    port: int,
    device_id: str,
    *,
    will: bool = False,
    persistent: bool = False,
    keepalive: int = 60,
) -> mqtt.Client:
    """A connected device-like paho client (loop running), optionally with the LWT `offline`."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"{device_id}-{uuid.uuid4().hex[:6]}" if not persistent else device_id,
        protocol=mqtt.MQTTv5,
    )
    client.reconnect_delay_set(1, 2)
    client.max_inflight_messages_set(100)
    if will:
        client.will_set(
            topic_for(device_id, Channel.STATUS),
            status_payload(Presence.OFFLINE),
            qos=1,
            retain=True,
        )
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    properties = None
    if persistent:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 300
    client.connect(
        "127.0.0.1", port, keepalive=keepalive, clean_start=not persistent, properties=properties
    )
    client.loop_start()
    assert connected.wait(10), "device client did not connect"
    return client


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def publish(client: mqtt.Client, device_id: str, channel: Channel, payload: bytes) -> None:
    """Publish as a device does (QoS 1, state and status retained) and wait for the PUBACK."""
    retain = channel in (Channel.STATE, Channel.STATUS)
    client.publish(topic_for(device_id, channel), payload, qos=1, retain=retain).wait_for_publish(
        10
    )


# --- the bridge under test -------------------------------------------------------------------


def bridge_config(port: int, **overrides: object) -> BridgeConfig:
    """A fast-polling config for a test broker; `use_shared=False` subscribes without $share."""
    base = BridgeConfig(
        broker=BrokerAddress(host="127.0.0.1", port=port, tls=False, username=None, password=None),
        client_id=f"bridge-{uuid.uuid4().hex[:8]}",
        seen_flush_seconds=0.2,
        outbox_poll_seconds=0.05,
    )
    return base.with_overrides(**overrides)


@contextlib.contextmanager
def running_bridge(port: int, **overrides: object) -> Iterator[Bridge]:
    """A bridge in this process, subscribed, stopped afterwards."""
    bridge = Bridge(bridge_config(port, **overrides))
    bridge.start()
    try:
        assert bridge.wait_subscribed(10), "bridge did not subscribe"
        yield bridge
    finally:
        bridge.stop()


def subprocess_database_url() -> str:
    """The URL of the test database this test runs on, for a `manage.py` child process."""
    settings = connection.settings_dict
    name = str(settings["NAME"])
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(name).resolve()}?timeout=20&transaction_mode=IMMEDIATE"
    assert connection.vendor == "postgresql", connection.vendor
    user = settings["USER"] or ""
    password = f":{settings['PASSWORD']}" if settings["PASSWORD"] else ""
    host = settings["HOST"] or "127.0.0.1"
    port = settings["PORT"] or 5432
    return f"postgres://{user}{password}@{host}:{port}/{name}"


class BridgeProcess:
    """`manage.py bridge` as a child process against `broker` and the test database."""

    def __init__(self, broker: MosquittoBroker, data_dir: Path, *args: str) -> None:
        self.client_id = f"bridge-{uuid.uuid4().hex[:8]}"
        self.metrics_port = free_port()
        self.args = [
            "--url",
            f"mqtt://127.0.0.1:{broker.port}",
            "--client-id",
            self.client_id,
            "--metrics-port",
            str(self.metrics_port),
            *args,
        ]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "bridge.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FLEET_DATA_DIR": str(data_dir),
            "DATABASE_URL": subprocess_database_url(),
            "FLEET_DB_CONN_MAX_AGE": "0",
            "FLEET_BRIDGE_SEEN_FLUSH_SECONDS": "0.2",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "bridge", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def scrape(self) -> str:
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return r.read().decode()


def retained_desired(port: int, expected: int) -> dict[str, bytes]:
    """The retained `desired` messages a new subscriber gets, by topic."""
    received: dict[str, bytes] = {}
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c, userdata, message):
        if message.retain:
            received[message.topic] = message.payload
        if len(received) >= expected:
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe("fleet/v1/devices/+/desired", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return received
