"""MQTT topics (docs/protocol.md): `fleet/v1/devices/{device_id}/{channel}`."""

import re
from enum import StrEnum

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError, brief
from device_agent.protocol.identifiers import DEVICE_ID

TOPIC_PREFIX = "fleet/v1/devices"
DEVICE_ID_PATTERN = DEVICE_ID.pattern
# fullmatch, not match + "$": "$" also matches before a trailing newline.
DEVICE_ID_RE = DEVICE_ID.regex
# MQTT 5 forbids "/", "+" and "#" in a share name; we keep to the device-id alphabet.
SHARE_GROUP_RE = re.compile(DEVICE_ID_PATTERN)


class Channel(StrEnum):
    """The last topic level: what a message is about."""

    DESIRED = "desired"
    STATE = "state"
    EVENTS = "events"
    TELEMETRY = "telemetry"
    STATUS = "status"
    ACKS = "acks"  # server -> device: which events and telemetry are stored (EventsAck)


# Delivery settings from docs/protocol.md, MQTT topics. Telemetry may go at QoS 1 when a
# device must not lose samples; 0 is the default because it is the bulk channel.
CHANNEL_QOS: dict[Channel, int] = {
    Channel.DESIRED: 1,
    Channel.STATE: 1,
    Channel.EVENTS: 1,
    Channel.TELEMETRY: 0,
    Channel.STATUS: 1,
    Channel.ACKS: 0,  # a lost ack costs one more send of the event, which is acked again
}
RETAINED_CHANNELS: frozenset[Channel] = frozenset({Channel.DESIRED, Channel.STATE, Channel.STATUS})


def is_valid_device_id(device_id: str) -> bool:
    """Whether `device_id` matches `[A-Za-z0-9_-]{1,64}`."""
    return DEVICE_ID.is_valid(device_id)


def _channel(channel: Channel | str) -> Channel:
    try:
        return Channel(channel)
    except ValueError:
        raise ProtocolError(ErrorCode.MALFORMED, f"unknown channel {brief(channel)}") from None


def topic_for(device_id: str, channel: Channel | str) -> str:
    """The topic `fleet/v1/devices/<device_id>/<channel>`; refuses a bad id or channel."""
    if not is_valid_device_id(device_id):
        raise ProtocolError(ErrorCode.MALFORMED, f"invalid device id {brief(device_id)}")
    return f"{TOPIC_PREFIX}/{device_id}/{_channel(channel)}"


def parse_topic(topic: str) -> tuple[str, Channel]:
    """Split a concrete topic into `(device_id, channel)`.

    Anything else (wildcards, a `$share/` prefix, extra or missing levels, an unknown
    channel, a bad device id) raises ProtocolError(malformed): the bridge uses the
    device id from the topic, which the broker ACL ties to the client certificate.
    """
    prefix = TOPIC_PREFIX + "/"
    if not topic.startswith(prefix):
        raise ProtocolError(ErrorCode.MALFORMED, "topic outside fleet/v1/devices/")
    levels = topic[len(prefix) :].split("/")
    if len(levels) != 2:
        raise ProtocolError(ErrorCode.MALFORMED, "topic must be fleet/v1/devices/<id>/<channel>")
    device_id, channel = levels
    if not is_valid_device_id(device_id):
        raise ProtocolError(ErrorCode.MALFORMED, f"invalid device id {brief(device_id)}")
    return device_id, _channel(channel)


def subscription_filter(channel: Channel | str, *, share_group: str | None = None) -> str:
    """The filter for `channel` across all devices: `fleet/v1/devices/+/<channel>`.

    With `share_group`, the MQTT 5 shared form `$share/<group>/fleet/v1/devices/+/<channel>`
    so that N bridge replicas split the load. Brokers without shared subscriptions
    (amqtt, which has no `$share`) need `share_group=None`.
    """
    topic_filter = f"{TOPIC_PREFIX}/+/{_channel(channel)}"
    if share_group is None:
        return topic_filter
    if SHARE_GROUP_RE.fullmatch(share_group) is None:
        raise ProtocolError(ErrorCode.MALFORMED, f"invalid share group {brief(share_group)}")
    return f"$share/{share_group}/{topic_filter}"
