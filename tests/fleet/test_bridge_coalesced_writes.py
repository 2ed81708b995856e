"""The bridge's paho client does less per publish than paho does: the packets queued
since the last write go out joined (up to WRITE_SIZE a write), in their order; packets
queued on paho's own network thread do not write its wake-up byte; and a PUBACK of two
bytes (success, no properties) is handled without decoding a new reason code and
properties for it.

paho-mqtt sends each packet with a send() of its own and wakes its network thread with a
one-byte write for each packet queued: per published desired state, two system calls
the bridge can spare (docs/benchmarks.md, "Desired state to N devices")."""

import socket
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from bridge_harness import running_bridge, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from fleet.bridge.client import PUBACK_HEADER, WRITE_SIZE, _Client


class CountingSocket:
    """The client's end of a socket pair: counts send() calls, takes at most `limit`
    bytes a call when set."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0
        self.limit: int | None = None

    def send(self, data: bytes) -> int:
        self.sends += 1
        chunk = data if self.limit is None else data[: self.limit]
        return self.sock.send(chunk)

    def fileno(self) -> int:
        return self.sock.fileno()


class CountingWake:
    """Stands in for paho's wake-up socket: counts the bytes written to it."""

    def __init__(self) -> None:
        self.writes = 0

    def send(self, data: bytes) -> int:
        self.writes += 1
        return len(data)


@pytest.fixture
def wired() -> Iterator[tuple[_Client, CountingSocket, socket.socket, CountingWake]]:
    """A bridge paho client whose network thread is this test's thread, writing to one end
    of a socket pair; the other end is the broker."""
    broker, ours = socket.socketpair()
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    counting = CountingSocket(ours)
    wake = CountingWake()
    client._sock = counting  # type: ignore[assignment]
    client._sockpairW = wake  # type: ignore[assignment]
    client._thread = threading.current_thread()
    try:
        yield client, counting, broker, wake
    finally:
        client._sock = None
        client._thread = None
        client._sockpairW = None
        broker.close()
        ours.close()


def _received(broker: socket.socket, size: int) -> bytes:
    broker.settimeout(5)
    data = b""
    while len(data) < size:
        data += broker.recv(size - len(data))
    return data


def _publish_packet(mid: int, payload: bytes, qos: int = 1) -> bytes:
    """Raw PUBLISH bytes (MQTT 5, no properties) to topic "t"."""
    topic = b"\x00\x01t"
    body = topic + (mid.to_bytes(2, "big") if qos else b"") + b"\x00" + payload
    assert len(body) < 128
    return bytes([0x30 | (qos << 1), len(body)]) + body


def test_packets_queued_on_the_network_thread_go_out_in_one_write_without_a_wake_up(
    wired,
) -> None:  # type: ignore[no-untyped-def]
    client, counting, broker, wake = wired
    # given three QoS 1 publishes and a PUBACK queued on the network thread
    packets = [_publish_packet(mid, f"payload {mid}".encode()) for mid in (1, 2, 3)]
    puback = bytes([PUBACK_HEADER, 2, 0, 9])
    for mid, packet in enumerate(packets, start=1):
        client._packet_queue(0x32, packet, mid, 1)
    client._packet_queue(PUBACK_HEADER, puback, 9, 1)
    assert wake.writes == 0  # the loop's next select() sees the socket wants writing
    # when paho writes
    assert client.loop_write() == mqtt.MQTT_ERR_SUCCESS
    # then they went out in one send(), in order, and nothing is left queued
    assert counting.sends == 1
    expected = b"".join(packets) + puback
    assert _received(broker, len(expected)) == expected
    assert not client._out_packet


def test_a_packet_queued_by_another_thread_still_wakes_the_network_thread(wired) -> None:  # type: ignore[no-untyped-def]
    client, counting, broker, wake = wired
    packet = _publish_packet(1, b"x")
    other = threading.Thread(target=client._packet_queue, args=(0x32, packet, 1, 1))
    other.start()
    other.join()
    assert wake.writes == 1


def test_a_qos0_publish_keeps_its_place_and_its_on_publish(wired) -> None:  # type: ignore[no-untyped-def]
    client, counting, broker, wake = wired
    published: list[int] = []
    client.on_publish = lambda c, u, mid, rc, props: published.append(mid)
    # given QoS 1, QoS 0, QoS 1 packets queued in that order
    first, middle, last = (
        _publish_packet(1, b"a"),
        _publish_packet(0, b"b", qos=0),
        _publish_packet(2, b"c"),
    )
    client._packet_queue(0x32, first, 1, 1)
    client._packet_queue(0x30, middle, 7, 0, mqtt.MQTTMessageInfo(7))
    client._packet_queue(0x32, last, 2, 1)
    # when paho writes
    client.loop_write()
    # then the bytes arrive in order, the QoS 0 publish on its own, its on_publish called once
    expected = first + middle + last
    assert _received(broker, len(expected)) == expected
    assert counting.sends == 3
    assert published == [7]


def test_partial_writes_resume_where_they_stopped_with_nothing_lost_or_repeated(wired) -> None:  # type: ignore[no-untyped-def]
    client, counting, broker, wake = wired
    counting.limit = 7  # the socket takes 7 bytes a call
    packets = [_publish_packet(mid, bytes([mid]) * 20) for mid in range(1, 6)]
    for mid, packet in enumerate(packets[:3], start=1):
        client._packet_queue(0x32, packet, mid, 1)
    # when paho writes once (7 bytes out), then more is queued, then paho writes on
    client.loop_write()
    for mid, packet in enumerate(packets[3:], start=4):
        client._packet_queue(0x32, packet, mid, 1)
    rounds = 0
    while client._out_packet:
        client.loop_write()
        rounds += 1
        assert rounds < 100
    # then the broker got every byte once, in order
    expected = b"".join(packets)
    assert _received(broker, len(expected)) == expected


def test_a_write_is_at_most_write_size(wired) -> None:  # type: ignore[no-untyped-def]
    client, counting, broker, wake = wired
    packet = _publish_packet(1, b"p" * 100)
    count = 2 * WRITE_SIZE // len(packet) + 3
    sizes: list[int] = []
    real_send = counting.send

    def send(data: bytes) -> int:
        sizes.append(len(data))
        return real_send(data)

    counting.send = send  # type: ignore[method-assign]
    reader = threading.Thread(target=_received, args=(broker, count * len(packet)), daemon=True)
    reader.start()
    for mid in range(count):
        client._packet_queue(0x32, packet, mid + 1, 1)
    while client._out_packet:
        client.loop_write()
    reader.join(10)
    assert sum(sizes) == count * len(packet)
    assert max(sizes) < WRITE_SIZE + len(packet)
    assert len(sizes) >= 3


@pytest.mark.django_db(transaction=True)
def test_the_bridge_publishes_desired_states_through_joined_writes(mosquitto) -> None:  # type: ignore[no-untyped-def]
    # given a running bridge whose paho client counts its sends
    with running_bridge(mosquitto.port) as bridge:
        client = bridge.connection._client
        sends = [0]
        real_send = client._sock_send

        def counting_send(data: Any) -> int:
            sends[0] += 1
            return real_send(data)

        client._sock_send = counting_send  # type: ignore[method-assign]
        # when 300 publishes are queued from another thread at once
        infos = [
            client.publish(f"fleet/v1/devices/d{i}/desired", b"x" * 200, qos=1, retain=False)
            for i in range(300)
        ]
        # then the broker acknowledges all of them, in fewer writes than publishes
        assert wait_until(lambda: all(info.is_published() for info in infos), 20)
        assert sends[0] < 300, sends[0]


# --- PUBACKs ---------------------------------------------------------------------------


def _puback(client: _Client, body: bytes) -> None:
    """paho's network thread, having read a PUBACK whose variable header is `body`."""
    client._in_packet = {"command": PUBACK_HEADER, "packet": body}  # type: ignore[typeddict-item]
    assert client._handle_pubackcomp("PUBACK") == mqtt.MQTT_ERR_SUCCESS


@pytest.fixture
def publishing(wired):  # type: ignore[no-untyped-def]
    """The wired client, connected, two publishes in flight at most, three handed to it."""
    client, counting, broker, wake = wired
    client.inflight_limit_set(2)  # as on_connect sets the broker's Receive Maximum
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    acks: list[tuple[int, bool, str]] = []
    codes: list[object] = []

    def on_publish(c, u, mid, rc, props):  # type: ignore[no-untyped-def]
        acks.append((mid, rc.is_failure, str(rc)))
        codes.append(rc)

    client.on_publish = on_publish
    client.codes = codes  # type: ignore[attr-defined]
    infos = [client.publish(f"t/{n}", b"x", qos=1) for n in range(3)]
    assert [info.mid for info in infos] == [1, 2, 3]
    assert client._inflight_messages == 2
    return client, acks, infos


def test_a_two_byte_puback_completes_its_publish_and_releases_the_next(publishing) -> None:  # type: ignore[no-untyped-def]
    client, acks, infos = publishing
    # when the broker acknowledges publish 1 with its packet id alone (success)
    _puback(client, b"\x00\x01")
    # then on_publish saw success, publish 1 is done, and the queued publish 3 went in flight
    assert acks == [(1, False, "Success")]
    assert infos[0].is_published()
    assert 1 not in client._out_messages
    assert client._inflight_messages == 2
    assert client._out_messages[3].state == mqtt.mqtt_ms_wait_for_puback
    # and a second one is told the same: one reason code stands for every such PUBACK
    # (paho builds a ReasonCode and a Properties for each, a quarter of the bridge's CPU)
    _puback(client, b"\x00\x02")
    assert acks[1] == (2, False, "Success")
    assert client.codes[0] is client.codes[1]


def test_a_puback_with_a_reason_code_is_decoded_as_paho_does(publishing) -> None:  # type: ignore[no-untyped-def]
    client, acks, infos = publishing
    # when the broker refuses publish 1: "Not authorized" (0x87), no properties
    _puback(client, b"\x00\x01\x87")
    # then on_publish saw the failure, and the fast path's success was not used for it
    assert acks == [(1, True, "Not authorized")]
    _puback(client, b"\x00\x02")
    assert acks[1] == (2, False, "Success")


def test_a_puback_for_no_publish_of_ours_is_ignored(publishing) -> None:  # type: ignore[no-untyped-def]
    client, acks, infos = publishing
    _puback(client, b"\x00\x63")  # packet id 99
    assert acks == []
    assert client._inflight_messages == 2
