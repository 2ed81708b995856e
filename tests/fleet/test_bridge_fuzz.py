"""Hostile input over a real broker: every bad message is dropped and counted by reason,
nothing of it is stored, and the bridge goes on storing valid messages afterwards."""

import json
from collections.abc import Iterator

import paho.mqtt.client as mqtt
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
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent.protocol.messages import MAX_PAYLOAD_BYTES
from device_agent.protocol.topics import Channel, topic_for
from fleet.bridge.runner import Bridge
from fleet.models import Device, DeviceEvent

pytestmark = pytest.mark.django_db(transaction=True)

VALID = {
    "events": json.loads(event_payload(4)),
    "state": json.loads(state_payload()),
    "status": {"v": 1, "status": "online"},
    "telemetry": {
        "v": 1,
        "samples": [
            {
                "model": "kws",
                "version": "1.4.0",
                "rollout_id": None,
                "arm": None,
                "metrics": {"latency_ms": 3},
                "ts": "2026-11-22T10:00:00Z",
            }
        ],
    },
}
# No None: several fields are nullable. Short text is never a valid enum value or version.
WRONG_TYPES: st.SearchStrategy[object] = st.one_of(
    st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just({})
)


@st.composite
def bad_message(draw: st.DrawFn) -> tuple[str, str, bytes, str]:
    """(device id in the topic, channel, payload, expected drop reason)."""
    channel = draw(st.sampled_from(sorted(VALID)))
    valid = dict(VALID[channel])
    kind = draw(
        st.sampled_from(
            [
                "garbage",
                "wrong_v",
                "nan",
                "wrong_type",
                "other_device",
                "unknown_device",
                "too_large",
            ]
        )
    )
    if kind == "garbage":
        payload = draw(st.binary(max_size=300).filter(lambda b: not b.strip().startswith(b"{")))
        return "dev-1", channel, payload, "malformed"
    if kind == "wrong_v":
        valid["v"] = draw(st.sampled_from([0, 2, "1", None, 1.5, True, [1]]))
        return "dev-1", channel, json.dumps(valid).encode(), "malformed"
    if kind == "nan":
        key = draw(st.sampled_from(sorted(valid)))
        text = json.dumps({**valid, key: "@@"}).replace(
            '"@@"', draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
        )
        return "dev-1", channel, text.encode(), "malformed"
    if kind == "wrong_type":
        key = draw(st.sampled_from(sorted(k for k in valid if k != "v")))
        value = draw(
            WRONG_TYPES.filter(lambda v: v != valid[key] and type(v) is not type(valid[key]))
        )
        valid[key] = value
        return "dev-1", channel, json.dumps(valid).encode(), "malformed"
    if kind == "other_device":
        valid["device_id"] = draw(st.sampled_from(["dev-2", "dev-404", "", 7]))
        return "dev-1", channel, json.dumps(valid).encode(), "topic_mismatch"
    if kind == "unknown_device":
        return (
            draw(st.from_regex(r"ghost-[a-z0-9]{1,8}", fullmatch=True)),
            channel,
            json.dumps(valid).encode(),
            "unknown_device",
        )
    size = draw(st.integers(MAX_PAYLOAD_BYTES + 1, 3 * MAX_PAYLOAD_BYTES))
    return "dev-1", channel, b"{" + b" " * (size - 2) + b"}", "payload_too_large"


@pytest.fixture
def bridge_and_device(mosquitto) -> Iterator[tuple[Bridge, mqtt.Client]]:
    make_device("dev-1")
    make_device("dev-2")
    with running_bridge(mosquitto.port) as bridge:
        device = device_client(mosquitto.port, "dev-1")
        try:
            yield bridge, device
        finally:
            close(device)


def _nothing_stored() -> bool:
    device = Device.objects.get(device_id="dev-1")
    return (
        not DeviceEvent.objects.exists()
        and device.reported == {}
        and not device.online
        and not Device.objects.filter(device_id__startswith="ghost").exists()
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(message=bad_message())
def test_bad_messages_are_counted_by_reason_and_never_stored(
    bridge_and_device: tuple[Bridge, mqtt.Client], message: tuple[str, str, bytes, str]
) -> None:
    _, device = bridge_and_device
    device_id, channel, payload, reason = message
    before = metric("fleet_bridge_dropped_total", channel=channel, reason=reason)
    # retain=False: a retained bad state/status would stay on the broker for later examples
    device.publish(topic_for(device_id, channel), payload, qos=1).wait_for_publish(10)
    assert wait_until(
        lambda: metric("fleet_bridge_dropped_total", channel=channel, reason=reason) == before + 1,
        10,
    ), (channel, reason, payload[:200])
    assert _nothing_stored()


def test_a_10_mb_payload_and_odd_topics_leave_the_bridge_working(
    bridge_and_device: tuple[Bridge, mqtt.Client], mosquitto
) -> None:
    _, device = bridge_and_device
    # The test broker has no max_packet_size (production sets one): 10 MB reaches the bridge.
    assert "max_packet_size" not in mosquitto.config_path.read_text()
    before = metric("fleet_bridge_dropped_total", channel="events", reason="payload_too_large")
    device.publish(
        topic_for("dev-1", Channel.EVENTS), b"{" + b"x" * 10_000_000 + b"}", qos=1
    ).wait_for_publish(20)
    # Topics outside the subscribed filters (extra levels, an unknown channel) never arrive.
    for topic in [
        "fleet/v1/devices/dev-1/events/extra",
        "fleet/v1/devices/dev-1/bogus",
        "fleet/v1/devices/dev-1",
    ]:
        device.publish(topic, event_payload(5), qos=1).wait_for_publish(10)

    # then a valid message afterwards is stored, and only it
    publish(device, "dev-1", Channel.EVENTS, event_payload(6))
    assert wait_until(lambda: DeviceEvent.objects.exists())
    assert list(DeviceEvent.objects.values_list("seq", flat=True)) == [6]
    # (counted once the batch is acknowledged, just after its rows commit)
    assert wait_until(
        lambda: (
            metric("fleet_bridge_dropped_total", channel="events", reason="payload_too_large")
            == before + 1
        )
    )
