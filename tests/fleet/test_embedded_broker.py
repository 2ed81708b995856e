"""``manage.py broker``: the quick start's broker really carries MQTT, with either engine."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from bridge_harness import retained_desired
from mqtt_broker import free_port, wait_for_port
from service_check import require_service

from fleet.management.commands.broker import mosquitto_binary

ROOT = Path(__file__).resolve().parents[2]


def _start(
    engine: str, port: int, data_dir: Path, *, own_group: bool = False
) -> subprocess.Popen[bytes]:
    """``manage.py broker`` with ``engine`` on ``port``, listening (stdout, stderr piped);
    ``own_group``: in a process group of its own, for a kill of the command and its broker."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", "broker", "--port", str(port), "--engine", engine],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin:/usr/sbin", "FLEET_DATA_DIR": str(data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=own_group,
    )
    try:
        wait_for_port(port, 30)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    return process


@pytest.mark.parametrize("engine", ["amqtt", "mosquitto"])
def test_broker_command_carries_qos1_messages(engine, tmp_path):
    if engine == "mosquitto":
        require_service(mosquitto_binary() is not None, "mosquitto", "apt-get install mosquitto")
    port = free_port()
    process = _start(engine, port, tmp_path)
    try:
        received: list[bytes] = []
        got = threading.Event()
        subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

        def on_message(c, userdata, message):
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


def test_the_mosquitto_broker_keeps_retained_messages_and_its_log_across_a_restart(
    tmp_path: Path,
) -> None:
    # as whoever runs it: started as root, mosquitto would switch to its own user and
    # could neither log nor save its database in this directory
    require_service(mosquitto_binary() is not None, "mosquitto", "apt-get install mosquitto")
    port = free_port()
    process = _start("mosquitto", port, tmp_path)
    try:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.publish("fleet/v1/devices/d1/desired", b"kept", qos=1, retain=True).wait_for_publish(
            10
        )
        client.disconnect()
        client.loop_stop()
    finally:
        process.terminate()  # mosquitto saves its database as it exits
        process.communicate(timeout=20)
    log = tmp_path / "mqtt" / "mosquitto.log"
    assert log.exists()
    assert log.stat().st_size > 0
    process = _start("mosquitto", port, tmp_path)
    try:
        assert retained_desired(port, 1) == {"fleet/v1/devices/d1/desired": b"kept"}
    finally:
        process.terminate()
        process.communicate(timeout=20)


def test_the_mosquitto_broker_saves_retained_messages_within_seconds(tmp_path: Path) -> None:
    # A crash (kill -9) keeps what the broker saved: the quick start saves every second,
    # so a desired state acknowledged a moment before is still there (issue 16).
    require_service(mosquitto_binary() is not None, "mosquitto", "apt-get install mosquitto")
    port = free_port()
    process = _start("mosquitto", port, tmp_path, own_group=True)
    try:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.publish(
            "fleet/v1/devices/d1/desired", b"saved", qos=1, retain=True
        ).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        database = tmp_path / "mqtt" / "mosquitto.db"
        deadline = time.monotonic() + 5
        while not (database.exists() and b"saved" in database.read_bytes()):
            assert time.monotonic() < deadline, "the quick start's broker did not save within 5 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the command and its mosquitto: a crash
        process.communicate(timeout=20)
    process = _start("mosquitto", port, tmp_path)
    try:
        assert retained_desired(port, 1) == {"fleet/v1/devices/d1/desired": b"saved"}
    finally:
        process.terminate()
        process.communicate(timeout=20)
