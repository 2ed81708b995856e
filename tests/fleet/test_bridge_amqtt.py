"""Against the embedded amqtt broker (MQTT 3.1.1 only, no `$share`), the bridge works with
`--no-share --protocol 3.1.1`: reports land and desired state goes out."""

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from bridge_harness import (
    ROOT,
    event_payload,
    make_device,
    queue_behind,
    running_bridge,
    status_payload,
    wait_until,
)
from mqtt_broker import free_port, wait_for_port

from device_agent.protocol.messages import Presence
from device_agent.protocol.topics import Channel, topic_for
from fleet.models import DesiredState, Device, DeviceEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def amqtt_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "broker", "--port", str(port), "--engine", "amqtt"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "FLEET_DATA_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30)
        yield port
    finally:
        process.terminate()
        process.wait(20)


def test_the_bridge_works_on_amqtt_without_shared_subscriptions(amqtt_port: int) -> None:
    # given a device with a desired state, and the bridge on amqtt
    device_row = make_device("dev-1")
    DesiredState.objects.create(device=device_row, seq=1, envelope=b'{"seq":1}')
    queue_behind()
    desired: list[bytes] = []
    got_desired = threading.Event()
    device = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="dev-1", protocol=mqtt.MQTTv311
    )

    def on_message(c, userdata, message):
        desired.append(message.payload)
        got_desired.set()

    device.on_message = on_message
    device.on_connect = lambda c, *a: c.subscribe(topic_for("dev-1", Channel.DESIRED), qos=1)
    device.connect("127.0.0.1", amqtt_port)
    device.loop_start()
    try:
        with running_bridge(amqtt_port, protocol="3.1.1", use_shared=False):
            # when the device reports
            device.publish(
                topic_for("dev-1", Channel.STATUS), status_payload(Presence.ONLINE), qos=1
            ).wait_for_publish(10)
            device.publish(
                topic_for("dev-1", Channel.EVENTS), event_payload(1), qos=1
            ).wait_for_publish(10)
            # then the reports land and the desired state reaches the device
            assert wait_until(lambda: DeviceEvent.objects.count() == 1)
            assert wait_until(lambda: Device.objects.get(device_id="dev-1").online)
            assert got_desired.wait(10)
            assert desired == [b'{"seq":1}']
            assert wait_until(lambda: DesiredState.objects.get().published_seq == 1)
    finally:
        device.disconnect()
        device.loop_stop()
