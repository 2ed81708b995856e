"""The test broker fixture really runs Mosquitto and keeps retained messages across restarts."""

import threading

import paho.mqtt.client as mqtt


def _client(port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_retained_message_survives_a_restart(mosquitto):
    # given a retained message
    pub = _client(mosquitto.port)
    pub.publish("t/x", b"hello", qos=1, retain=True).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    # when the broker restarts
    mosquitto.restart()
    # then a new subscriber gets it
    got = threading.Event()
    received: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(client, userdata, message):
        received.append(message.payload)
        got.set()

    sub.on_message = on_message
    sub.on_connect = lambda c, *a: c.subscribe("t/#", qos=1)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    try:
        assert got.wait(10), mosquitto.log_tail()
        assert received == [b"hello"]
    finally:
        sub.disconnect()
        sub.loop_stop()
