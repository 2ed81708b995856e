"""A burst of messages larger than the bridge's Receive Maximum: the broker sends the rest
only as the bridge's PUBACKs come, so every message stored means the bridge acknowledged
what it stored."""

import pytest
from bridge_harness import device_client, event_payload, make_device, running_bridge, wait_until

from device_agent.protocol.topics import Channel, topic_for
from fleet.models import DeviceEvent


@pytest.mark.django_db(transaction=True)
def test_a_burst_above_the_receive_maximum_is_stored_and_acknowledged(mosquitto) -> None:
    # given a running bridge and 50 devices
    ids = [f"dev-{i:02d}" for i in range(50)]
    for device_id in ids:
        make_device(device_id)
    with running_bridge(mosquitto.port):
        # when each publishes 30 events as fast as it can, on one connection: more than the
        # bridge's Receive Maximum (1 000), so the broker sends the rest only as PUBACKs come
        sender = device_client(mosquitto.port, "burst")
        infos = [
            sender.publish(
                topic_for(device_id, Channel.EVENTS), event_payload(seq, progress=seq), qos=1
            )
            for device_id in ids
            for seq in range(1, 31)
        ]
        for info in infos:
            info.wait_for_publish(10)
        # then every one of them is stored
        assert wait_until(lambda: DeviceEvent.objects.count() == 1500, 30)
        sender.loop_stop()
        sender.disconnect()
