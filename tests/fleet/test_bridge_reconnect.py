"""The bridge across a lost connection, against a real Mosquitto: what was in flight when
the connection went is delivered after the bridge reconnects, nothing is stored twice,
and the bridge never has more publishes awaiting PUBACK than its limit, not even when it
sends them all again on the new connection (paho sends again every publish it holds).

The bridge reaches the broker through a TCP relay of the test's own, which can hold one
direction (the bytes wait in the relay) and cut every connection, and which reads the
MQTT packets going through to count them (MQTT 5, section 2)."""

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from bridge_harness import (
    close,
    device_client,
    event_payload,
    make_device,
    queue_behind,
    retained_desired,
    running_bridge,
    wait_until,
)
from django.db.models import F

from device_agent.protocol.topics import Channel, topic_for
from fleet.models import DesiredState, Device, DeviceEvent

PUBLISH, PUBACK = 3, 4


@dataclass
class Tally:
    """The packets one direction of the relay carried, over every connection."""

    publishes: int = 0
    duplicates: int = 0  # PUBLISH with the DUP flag: sent again after a reconnect
    pubacks: int = 0
    unacked: set[int] = field(default_factory=set)  # QoS 1 packet ids of this connection
    most_unacked: int = 0


class Relay:
    """TCP relay from a local port to the broker, reading the MQTT packets it carries."""

    def __init__(self, broker_port: int) -> None:
        self._broker_port = broker_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.upstream = Tally()  # client -> broker
        self.downstream = Tally()  # broker -> client
        self.connections = 0
        self._down_open = threading.Event()
        self._down_open.set()
        self._up_open = threading.Event()
        self._up_open.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self, *, up: bool = False, down: bool = False) -> None:
        """Stop forwarding a direction; what arrives waits in the relay."""
        if up:
            self._up_open.clear()
        if down:
            self._down_open.clear()

    def cut(self) -> None:
        """Close every connection (what waits is dropped); new ones flow both ways."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self._up_open.set()
            self._down_open.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self._broker_port))
            with self._lock:
                self._sockets += [client, broker]
                self.connections += 1
                # A new connection: the broker counts in-flight publishes per connection.
                self.upstream.unacked.clear()
            threading.Thread(
                target=self._pump, args=(client, broker, self._up_open, "up"), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(broker, client, self._down_open, "down"), daemon=True
            ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, gate: threading.Event, way: str
    ) -> None:
        buffer = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                gate.wait()
                if src not in self._sockets:
                    break  # cut while waiting: dropped
                buffer = self._count(buffer + data, way)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _count(self, buffer: bytes, way: str) -> bytes:
        """Count the whole packets at the start of `buffer`; the rest, for the next read."""
        while True:
            length, multiplier, pos = 0, 1, 1
            while True:
                if pos >= len(buffer):
                    return buffer
                byte = buffer[pos]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                pos += 1
                if not byte & 0x80:
                    break
            if len(buffer) < pos + length:
                return buffer
            header, body, buffer = buffer[0], buffer[pos : pos + length], buffer[pos + length :]
            with self._lock:
                self._packet(header, body, way)

    def _packet(self, header: int, body: bytes, way: str) -> None:
        kind = header >> 4
        sender = self.upstream if way == "up" else self.downstream
        receiver = self.downstream if way == "up" else self.upstream
        if kind == PUBLISH:
            sender.publishes += 1
            sender.duplicates += bool(header & 0x08)
            if (header >> 1) & 0x03:
                topic_length = int.from_bytes(body[:2], "big")
                packet_id = int.from_bytes(body[2 + topic_length : 4 + topic_length], "big")
                sender.unacked.add(packet_id)
                sender.most_unacked = max(sender.most_unacked, len(sender.unacked))
        elif kind == PUBACK:
            sender.pubacks += 1
            receiver.unacked.discard(int.from_bytes(body[:2], "big"))


@pytest.fixture
def relay(mosquitto) -> Iterator[Relay]:
    relay = Relay(mosquitto.port)
    yield relay
    relay.close()


DEVICES = 300
LIMIT = 10  # the bridge's publishes in flight (FLEET_BRIDGE_MAX_INFLIGHT)


@pytest.mark.django_db(transaction=True)
def test_desired_states_in_flight_at_a_lost_connection_are_delivered_after_it(
    mosquitto,
    relay: Relay,
) -> None:
    # given a bridge connected through the relay, 10 publishes in flight at most, that
    # has published a desired state (so it is past its checks on connecting)
    ids = [f"dev-{i:03d}" for i in range(DEVICES)]
    for device_id in ["dev-warm", *ids]:
        make_device(device_id)
    with running_bridge(relay.port, max_inflight=LIMIT, reconnect_min_seconds=1) as bridge:
        _desired(["dev-warm"])
        bridge.outbox.committed()
        assert wait_until(_all_published, 30)
        # and 300 desired states queued while the broker's PUBACKs wait in the relay
        relay.hold(down=True)
        _desired(ids)
        bridge.outbox.committed()
        # the bridge sends its limit and waits: those are in flight
        assert wait_until(lambda: len(relay.upstream.unacked) >= LIMIT, 30), relay.upstream
        sent = relay.upstream.publishes
        assert not wait_until(lambda: relay.upstream.publishes > sent, 0.3)

        # when the connection is lost with them in flight
        relay.cut()

        # then the bridge reconnects, sends them again and the rest, and records every one
        assert wait_until(_all_published, 30), relay.upstream
    assert relay.connections >= 2
    assert relay.upstream.duplicates >= 1, relay.upstream  # sent again, marked DUP
    # and never more than its limit awaited PUBACK on a connection
    assert relay.upstream.most_unacked <= LIMIT, relay.upstream
    # and the broker holds every device's envelope
    assert retained_desired(mosquitto.port, DEVICES + 1) == {
        topic_for(d, Channel.DESIRED): f"env-{d}".encode() for d in ["dev-warm", *ids]
    }


def _desired(device_ids: list[str]) -> None:
    """A desired state at seq 1 for each device, queued as the director queues it."""
    DesiredState.objects.bulk_create(
        DesiredState(device=d, seq=1, envelope=f"env-{d.device_id}".encode())
        for d in Device.objects.filter(device_id__in=device_ids)
    )
    queue_behind()


def _all_published() -> bool:
    return not DesiredState.objects.filter(published_seq__lt=F("seq")).exists()


EVENTS = 200


@pytest.mark.django_db(transaction=True)
def test_events_in_flight_at_a_lost_connection_are_stored_once(
    mosquitto,
    relay: Relay,
) -> None:
    # given a bridge connected through the relay, whose PUBACKs wait in the relay
    make_device("dev-1")
    with running_bridge(relay.port, reconnect_min_seconds=1):
        relay.hold(up=True)
        # when a device sends 200 events, which the bridge receives and stores
        device = device_client(mosquitto.port, "dev-1")
        try:
            for seq in range(1, EVENTS + 1):
                device.publish(topic_for("dev-1", Channel.EVENTS), event_payload(seq), qos=1)
            assert wait_until(lambda: relay.downstream.publishes >= EVENTS, 30)
            assert wait_until(lambda: DeviceEvent.objects.count() == EVENTS, 30)
            # and the connection is lost before the broker had one PUBACK of them
            relay.cut()
            # then the broker delivers them again on the bridge's next connection
            assert wait_until(lambda: relay.downstream.duplicates >= EVENTS, 30), relay.downstream
            assert wait_until(lambda: relay.upstream.pubacks >= EVENTS, 30), relay.upstream
        finally:
            close(device)
    # and each is stored once
    assert DeviceEvent.objects.count() == EVENTS
    assert sorted(DeviceEvent.objects.values_list("seq", flat=True)) == list(range(1, EVENTS + 1))
