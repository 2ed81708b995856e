"""A lightweight fleet for the rollout benchmark: one process, one MQTT connection, many
device ids (run as a script by tests/bench/test_bench_rollout.py, never imported by it).

``devices`` mode: subscribes to each of its devices' own ``desired`` topic (QoS 1) and,
for every envelope, does what ``fleet-agent`` does on the wire for an update that
works: verifies the DSSE signature with the pinned director key (the key is loaded
once), parses the desired state with ``device_agent.protocol``, ignores a seq it has
already applied, then publishes its update events for the model's target (``--phases``,
ending in ``committed``; QoS 1, not retained) and its retained ``state`` (the new
version and release counter, ``last_seq``, QoS 1). It skips what the agent does in
between (TUF, download, verify, swap, trial): that is the device's time, not the
control plane's.

``listen`` mode: the reference's receiving end, subscribed to every device's ``events``
and ``state``; done once every expected device has sent both a ``committed`` event and
its state.

Both print ``ready`` once subscribed, then ``done <monotonic time>`` (or ``timeout``),
and when stdin closes, a JSON summary on stdout. Times are ``time.monotonic()``, which
is one clock for every process on the machine.
"""

import argparse
import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from device_agent.protocol.envelope import load_public_key_pem, verify_desired
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import (
    ModelState,
    Phase,
    ReportedState,
    Slot,
    UpdateEvent,
    loads_json,
)
from device_agent.protocol.topics import Channel, parse_topic, topic_for

TOPICS_PER_SUBSCRIBE = 500
MAX_INFLIGHT = 1000  # the broker's Receive Maximum in the benchmark's config


def _client(name: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    return client


class Fleet:
    """The devices of one shard: their last applied seq and what they received."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.devices = Path(args.devices).read_text().split()
        self.hardware = args.hardware
        self.phases = [Phase(p) for p in args.phases.split(",")]
        if self.phases[-1] is not Phase.COMMITTED:
            raise SystemExit("--phases must end with committed")
        self.key = load_public_key_pem(Path(args.pubkey).read_bytes())
        self.last_seq: dict[str, int] = dict.fromkeys(self.devices, 0)
        self.envelopes: dict[str, list[list[Any]]] = {d: [] for d in self.devices}
        self.stats = {"messages": 0, "bad_signature": 0, "stale": 0, "not_qos1": 0}
        self.applied = 0
        self.done = threading.Event()
        self.done_at = 0.0
        self.client = _client(args.name)
        self.subscribed = threading.Event()
        self.pending_subacks = 0

    def on_connect(self, client: mqtt.Client, *args: Any) -> None:
        topics = [topic_for(d, Channel.DESIRED) for d in self.devices]
        chunks = [
            topics[i : i + TOPICS_PER_SUBSCRIBE]
            for i in range(0, len(topics), TOPICS_PER_SUBSCRIBE)
        ]
        self.pending_subacks = len(chunks)
        for chunk in chunks:
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in chunk])

    def on_subscribe(self, *args: Any) -> None:
        self.pending_subacks -= 1
        if self.pending_subacks == 0:
            self.subscribed.set()

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received = time.monotonic()
        self.stats["messages"] += 1
        self.stats["not_qos1"] += message.qos != 1
        device_id, _ = parse_topic(message.topic)
        try:
            desired = verify_desired(bytes(message.payload), self.key)
        except ProtocolError:
            self.stats["bad_signature"] += 1
            return
        target = desired.models[0] if desired.models else None
        log = self.envelopes[device_id]
        log.append([desired.seq, target.rollout_id if target else None, received, 0.0])
        if desired.device_id != device_id or desired.seq <= self.last_seq[device_id]:
            self.stats["stale"] += 1
            return
        self.last_seq[device_id] = desired.seq
        if target is None:
            return
        events = topic_for(device_id, Channel.EVENTS)
        for phase in self.phases:
            event = UpdateEvent(
                seq=desired.seq,
                rollout_id=target.rollout_id,
                model=target.name,
                phase=phase,
                progress=None,
                code=None,
                detail="",
                ts=datetime.now(UTC),
            )
            client.publish(events, event.to_json(), qos=1)
        state = ReportedState(
            agent_version="bench-sim/1",
            hardware=self.hardware,
            models=(
                ModelState(
                    name=target.name,
                    version=target.version,
                    release_counter=target.release_counter,
                    slot=Slot.B,
                    status=Phase.COMMITTED,
                ),
            ),
            last_seq=desired.seq,
        )
        client.publish(topic_for(device_id, Channel.STATE), state.to_json(), qos=1, retain=True)
        log[-1][3] = time.monotonic()
        self.applied += 1
        if self.applied == len(self.devices) and not self.done.is_set():
            self.done_at = log[-1][3]
            self.done.set()

    def summary(self) -> dict[str, Any]:
        return {**self.stats, "envelopes": self.envelopes}


class Listener:
    """The reference's receiving end: which devices have committed and reported state."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.expected = set(Path(args.devices).read_text().split())
        self.committed: set[str] = set()
        self.reported: set[str] = set()
        self.complete = 0  # devices with both
        self.stats = {"events": 0, "states": 0}
        self.done = threading.Event()
        self.done_at = 0.0
        self.client = _client(args.name)
        self.subscribed = threading.Event()

    def on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(
            [
                (f"fleet/v1/devices/+/{Channel.EVENTS}", SubscribeOptions(qos=1)),
                (f"fleet/v1/devices/+/{Channel.STATE}", SubscribeOptions(qos=1)),
            ]
        )

    def on_subscribe(self, *args: Any) -> None:
        self.subscribed.set()

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        device_id, channel = parse_topic(message.topic)
        if channel is Channel.EVENTS:
            self.stats["events"] += 1
            if loads_json(bytes(message.payload)).get("phase") != Phase.COMMITTED:
                return
            seen, other = self.committed, self.reported
        else:
            self.stats["states"] += 1
            seen, other = self.reported, self.committed
        if device_id in seen or device_id not in self.expected:
            return
        seen.add(device_id)
        self.complete += device_id in other
        if self.complete == len(self.expected) and not self.done.is_set():
            self.done_at = time.monotonic()
            self.done.set()

    def summary(self) -> dict[str, Any]:
        return {
            **self.stats,
            "committed": len(self.committed),
            "reported": len(self.reported),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["devices", "listen"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", required=True, help="a file of device ids")
    parser.add_argument("--name", required=True, help="MQTT client id")
    parser.add_argument("--pubkey", help="the director's public key (PEM)")
    parser.add_argument("--hardware", default="linux-x86_64-fp32")
    parser.add_argument("--phases", default="accepted,committed")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    role: Fleet | Listener = Fleet(args) if args.mode == "devices" else Listener(args)
    client = role.client
    client.on_connect = role.on_connect
    client.on_subscribe = role.on_subscribe
    client.on_message = role.on_message
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    if not role.subscribed.wait(60):
        print("not subscribed", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    closed = threading.Event()

    def read_stdin() -> None:
        sys.stdin.read()
        closed.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    deadline = time.monotonic() + args.timeout
    while not (role.done.is_set() or closed.is_set()) and time.monotonic() < deadline:
        role.done.wait(0.1)
    print(f"done {role.done_at!r}" if role.done.is_set() else "timeout", flush=True)
    closed.wait()
    client.disconnect()
    client.loop_stop()
    json.dump(role.summary(), sys.stdout)


if __name__ == "__main__":
    main()
