"""A device's state, events, telemetry and status reach the database through a real
Mosquitto and the bridge; its last will marks it offline when its connection dies."""

import json

import pytest
from bridge_harness import (
    close,
    device_client,
    event_payload,
    make_device,
    metric,
    publish,
    running_bridge,
    state_payload,
    status_payload,
    wait_until,
)

from device_agent.protocol.messages import Phase, Presence
from device_agent.protocol.topics import Channel
from fleet.models import Device, DeviceEvent

pytestmark = pytest.mark.django_db(transaction=True)

TELEMETRY = json.dumps(
    {
        "v": 1,
        "samples": [
            {
                "model": "kws",
                "version": "1.4.0",
                "rollout_id": "r-9",
                "arm": "B",
                "metrics": {"latency_ms": 12.5, "confidence": 0.93},
                "ts": "2026-11-22T10:00:00Z",
            }
        ],
    }
).encode()


def _device() -> Device:
    return Device.objects.get(device_id="dev-1")


def test_reports_land_and_the_last_will_marks_the_device_offline(mosquitto) -> None:
    # given an enrolled device and a running bridge
    make_device("dev-1")
    telemetry_before = metric("fleet_bridge_messages_total", channel="telemetry", result="accepted")
    with running_bridge(mosquitto.port):
        device = device_client(mosquitto.port, "dev-1", will=True, keepalive=5)
        # when the device says it is online, reports its state, events and telemetry
        publish(device, "dev-1", Channel.STATUS, status_payload(Presence.ONLINE))
        publish(device, "dev-1", Channel.STATE, state_payload(last_seq=7))
        publish(
            device, "dev-1", Channel.EVENTS, event_payload(7, phase=Phase.ACCEPTED, progress=None)
        )
        publish(device, "dev-1", Channel.EVENTS, event_payload(7, progress=40))
        publish(
            device, "dev-1", Channel.EVENTS, event_payload(7, phase=Phase.COMMITTED, progress=None)
        )
        publish(device, "dev-1", Channel.TELEMETRY, TELEMETRY)

        # then all of it is in the database
        assert wait_until(lambda: DeviceEvent.objects.count() == 3 and _device().reported_seq == 7)
        assert wait_until(
            lambda: (
                metric("fleet_bridge_messages_total", channel="telemetry", result="accepted")
                == telemetry_before + 1
            )
        )
        device_row = _device()
        assert device_row.online
        assert device_row.agent_version == "0.3.1"
        assert device_row.reported["models"][0]["status"] == "committed"
        assert device_row.last_seen_at is not None
        events = list(DeviceEvent.objects.order_by("id").values_list("seq", "phase", "progress"))
        assert events == [(7, "accepted", None), (7, "downloading", 40), (7, "committed", None)]
        event = DeviceEvent.objects.get(phase="committed")
        assert (event.rollout_id, event.model, event.code, event.ts.isoformat()) == (
            "r-9",
            "kws",
            "",
            "2026-11-22T10:00:00+00:00",
        )

        # when the device's connection dies without a DISCONNECT
        device.loop_stop()
        sock = device.socket()
        assert sock is not None
        sock.close()

        # then the broker publishes its last will and the bridge marks it offline
        assert wait_until(lambda: not _device().online), mosquitto.log_tail()
        assert _device().last_seen_at is not None


def test_the_retained_status_of_a_device_reaches_a_bridge_started_later(mosquitto) -> None:
    # given a device that announced itself before any bridge ran
    make_device("dev-1")
    device = device_client(mosquitto.port, "dev-1")
    publish(device, "dev-1", Channel.STATUS, status_payload(Presence.ONLINE))
    publish(device, "dev-1", Channel.STATE, state_payload(last_seq=3))
    close(device)
    # when the bridge subscribes for the first time
    with running_bridge(mosquitto.port):
        # then it gets the retained status and state
        assert wait_until(lambda: _device().online and _device().reported_seq == 3)
