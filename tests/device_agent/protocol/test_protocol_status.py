"""Status: online/offline, also usable as the broker's last will."""

import pytest

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import DeviceStatus, Presence, parse_status


@pytest.mark.parametrize("presence", list(Presence))
def test_round_trip(presence: Presence) -> None:
    data = DeviceStatus(status=presence).to_json()

    assert data == b'{"v":1,"status":"%s"}' % presence.value.encode()
    assert parse_status(data).status == presence


@pytest.mark.parametrize(
    "data",
    [
        b"online",
        b'{"v":1,"status":"away"}',
        b'{"v":1}',
        b'{"status":"online"}',
        b'{"v":1,"status":"online","ts":1}',
        b'{"v":1,"status":true}',
    ],
)
def test_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_status(data)
    assert caught.value.code == ErrorCode.MALFORMED
