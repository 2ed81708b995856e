"""The bridge reads the broker connection through a buffer (what paho asks for, byte for
byte, in fewer system calls, nothing left waiting in the buffer) and acknowledges a
stored batch in one write."""

import socket
from collections.abc import Iterator

import pytest
from bridge_harness import device_client, event_payload, make_device, running_bridge, wait_until

from device_agent.protocol.topics import Channel, topic_for
from fleet.bridge.client import READ_SIZE, BufferedSocket
from fleet.models import DeviceEvent


class CountingSocket:
    """A socket end that counts its recv() calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls = 0

    def recv(self, bufsize: int) -> bytes:
        self.calls += 1
        return self.sock.recv(bufsize)

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, CountingSocket]]:
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        yield a, CountingSocket(b)
    finally:
        a.close()
        b.close()


def test_small_reads_are_served_from_one_system_call(pair) -> None:  # type: ignore[no-untyped-def]
    writer, counting = pair
    buffered = BufferedSocket(counting)
    data = bytes(range(256)) * 40  # 10 240 bytes
    writer.sendall(data)
    # paho's pattern: one byte, one byte, then the rest of a packet
    got = b""
    while len(got) < len(data):
        got += buffered.recv(1) + buffered.recv(1) + buffered.recv(98)
    assert got == data
    assert counting.calls == 1
    assert buffered.pending() == 0
    # nothing buffered and nothing on the socket: what the socket raises
    with pytest.raises(BlockingIOError):
        buffered.recv(1)


def test_pending_counts_what_is_buffered_and_a_large_read_is_not_copied(pair) -> None:  # type: ignore[no-untyped-def]
    writer, counting = pair
    buffered = BufferedSocket(counting)
    writer.sendall(b"abcdef")
    assert buffered.recv(2) == b"ab"
    assert buffered.pending() == 4
    assert buffered.recv(100) == b"cdef"  # what is left, no more
    assert buffered.pending() == 0
    big = b"x" * (READ_SIZE + 10)
    writer.sendall(big)
    got = b""
    while len(got) < len(big):
        got += buffered.recv(len(big) - len(got))
    assert got == big


def test_the_end_of_the_connection_reads_as_empty(pair) -> None:  # type: ignore[no-untyped-def]
    writer, counting = pair
    buffered = BufferedSocket(counting)
    writer.sendall(b"zz")
    writer.close()
    assert buffered.recv(1) == b"z"
    assert buffered.recv(1) == b"z"
    assert buffered.recv(1) == b""
    assert buffered.fileno() == counting.fileno()  # the rest goes to the socket


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_messages_reaches_the_bridge_through_the_buffer(mosquitto) -> None:  # type: ignore[no-untyped-def]
    # given a running bridge and 50 devices
    ids = [f"dev-{i:02d}" for i in range(50)]
    for device_id in ids:
        make_device(device_id)
    with running_bridge(mosquitto.port) as bridge:
        client = bridge.connection._client
        assert isinstance(client.socket(), BufferedSocket)  # paho opened it through ours
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
