"""``manage.py broker``: the quick start's broker really carries MQTT, with either engine."""

import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_broker import free_port, wait_for_port

from fleet.management.commands.broker import mosquitto_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("engine", ["amqtt", "mosquitto"])
def test_broker_command_carries_qos1_messages(engine, tmp_path):  # type: ignore[no-untyped-def]
    if engine == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed: apt-get install mosquitto")
    port = free_port()
    env = {"PATH": "/usr/bin:/bin:/usr/sbin", "FLEET_DATA_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "manage.py", "broker", "--port", str(port), "--engine", engine],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, 30)
        received: list[bytes] = []
        got = threading.Event()
        subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

        def on_message(c, userdata, message):  # type: ignore[no-untyped-def]
            received.append(message.payload)
            got.set()

        client.on_message = on_message
        client.on_connect = lambda c, *a: c.subscribe("fleet/v1/devices/+/events", qos=1)
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect("127.0.0.1", port)
        client.loop_start()
        assert subscribed.wait(10)
        client.publish("fleet/v1/devices/d1/events", b'{"v":1}', qos=1).wait_for_publish(10)
        assert got.wait(10)
        assert received == [b'{"v":1}']
        client.disconnect()
        client.loop_stop()
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert b"Production runs Mosquitto with TLS" in err
