"""Topics: build, parse back, refuse anything that is not one device's channel."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.topics import (
    CHANNEL_QOS,
    RETAINED_CHANNELS,
    Channel,
    parse_topic,
    subscription_filter,
    topic_for,
)

device_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@pytest.mark.parametrize("channel", list(Channel))
def test_topic_round_trip(channel: Channel) -> None:
    topic = topic_for("dev-0042", channel)

    assert topic == f"fleet/v1/devices/dev-0042/{channel.value}"
    assert parse_topic(topic) == ("dev-0042", channel)


def test_channel_delivery_matches_design_table() -> None:
    assert {Channel.DESIRED, Channel.STATE, Channel.STATUS} == RETAINED_CHANNELS
    assert CHANNEL_QOS[Channel.DESIRED] == CHANNEL_QOS[Channel.EVENTS] == 1
    assert set(CHANNEL_QOS) == set(Channel)


@pytest.mark.parametrize(
    "topic",
    [
        "fleet/v1/devices/+/state",
        "fleet/v1/devices/#",
        "fleet/v1/devices/dev-1/#",
        "fleet/v1/devices/dev-1/+",
        "fleet/v1/devices/dev-1/state/extra",
        "fleet/v1/devices/dev-1/state/",
        "fleet/v1/devices/dev-1",
        "fleet/v1/devices//state",
        "fleet/v1/devices/dev.1/state",
        "fleet/v1/devices/dev 1/state",
        "fleet/v1/devices/dev-1\n/state",
        "fleet/v1/devices/" + "a" * 65 + "/state",
        "fleet/v1/devices/dev-1/firmware",
        "fleet/v1/devices/dev-1/State",
        "fleet/v2/devices/dev-1/state",
        "/fleet/v1/devices/dev-1/state",
        "$share/bridge/fleet/v1/devices/dev-1/state",
        "",
    ],
)
def test_parse_refuses(topic: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_topic(topic)

    assert caught.value.code == ErrorCode.MALFORMED


@pytest.mark.parametrize("device_id", ["", "a" * 65, "dev/1", "dev+", "dev#", "dév", "dev-1\n"])
def test_topic_for_refuses_bad_device_id(device_id: str) -> None:
    with pytest.raises(ProtocolError):
        topic_for(device_id, Channel.STATE)


def test_topic_for_refuses_unknown_channel() -> None:
    with pytest.raises(ProtocolError):
        topic_for("dev-1", "firmware")


def test_subscription_filters() -> None:
    assert subscription_filter(Channel.TELEMETRY) == "fleet/v1/devices/+/telemetry"
    assert (
        subscription_filter("state", share_group="bridge")
        == "$share/bridge/fleet/v1/devices/+/state"
    )


@pytest.mark.parametrize("group", ["", "a/b", "a+", "#", "x" * 65])
def test_subscription_filter_refuses_bad_share_group(group: str) -> None:
    with pytest.raises(ProtocolError):
        subscription_filter(Channel.STATE, share_group=group)


@settings(max_examples=200, deadline=None, database=None)
@given(device_id=device_ids, channel=st.sampled_from(Channel))
def test_round_trip_any_valid_id(device_id: str, channel: Channel) -> None:
    assert parse_topic(topic_for(device_id, channel)) == (device_id, channel)


@settings(max_examples=300, deadline=None, database=None)
@given(
    topic=st.one_of(
        st.text(),
        st.builds("fleet/v1/devices/{}".format, st.text()),
        st.builds("fleet/v1/devices/{}/{}".format, st.text(), st.text()),
    )
)
def test_parse_never_raises_anything_else(topic: str) -> None:
    try:
        device_id, channel = parse_topic(topic)
    except ProtocolError:
        return
    assert topic_for(device_id, channel) == topic
