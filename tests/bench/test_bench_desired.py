"""Desired-state benchmark (issue 3): sign and publish desired state to N devices through
the real system, against a bare paho publisher sending the same N retained QoS 1
messages (same bytes) to the same kind of broker in the same run.

Reference: a bare paho client connecting, publishing the devices' current envelopes to
their `desired` topics retained at QoS 1 and waiting for every PUBACK, and a subscriber
in another process receiving all N. The real system, in two set-ups, each run until
the outbox queue holds none of the rows (each has ``published_seq == seq``) and the
same kind of subscriber has all N with the bytes in the database:

- sequential: ``devices_desired_set`` (the director: check, sign, write the outbox rows),
  then the bridge (``fleet.bridge.runner.Bridge`` in this process: its real paho
  connection and outbox) started against that backlog. Gives the two phases apart.
- overlapped, as deployed: ``manage.py bridge`` already running in its own process while
  the director writes, so each committed batch goes out while the next is signed.

Each run has a fresh broker (no retained message left over). Prints the phases, totals
and ratios against the reference (goal: total <= 2.0x), never asserts them; asserts that
every device got its envelope exactly once, retained, at QoS 1, with the right bytes.
Run with ``pytest tests/bench/test_bench_desired.py -m bench -s`` (DATABASE_URL for
PostgreSQL); see docs/benchmarks.md.
"""

import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from bench_fleet import HARDWARE, bench_broker, envelopes, kws_artifacts
from django.db import connection
from django.db.models import Count, F, Max, Min, QuerySet
from mqtt_broker import MosquittoBroker

from fleet.bridge.config import BridgeConfig
from fleet.bridge.runner import Bridge
from fleet.director import ModelAssignment, devices_desired_set
from fleet.keys import director_private_key
from fleet.models import DesiredOutbox, DesiredState, Device
from ota.models import Artifact

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]

SIZES = (1_000, 10_000)
RUNS = int(os.environ.get("BENCH_DESIRED_RUNS", "3"))
WARMUP_DEVICES = 50
RATIO_GOAL = 2.0
FILTER = "fleet/v1/devices/+/desired"
SUBSCRIBER_TIMEOUT = 120.0
PRODUCTION_CONN_MAX_AGE = 60  # fleet/settings.py's FLEET_DB_CONN_MAX_AGE default
DUPLICATE_GRACE = 0.3  # seconds the subscriber keeps listening after the last topic

# The verifying subscriber, in a process of its own so that it does not share the GIL
# with either publisher. Prints "ready" once subscribed, "done <monotonic time of the
# last new topic>" (or "timeout"), then, when its stdin closes, what it received.
SUBSCRIBER = r"""
import hashlib, json, sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

port, expected, topic_filter = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
digests, stats, done = {}, {"messages": 0, "not_retained": 0, "not_qos1": 0}, threading.Event()
last = [0.0]

def on_connect(client, userdata, flags, reason_code, properties):
    # retainAsPublished: a live message keeps the retain flag it was published with.
    client.subscribe(topic_filter, options=SubscribeOptions(qos=1, retainAsPublished=True))

def on_subscribe(client, userdata, mid, reason_codes, properties):
    print("ready", flush=True)

def on_message(client, userdata, message):
    stats["messages"] += 1
    stats["not_retained"] += not message.retain
    stats["not_qos1"] += message.qos != 1
    digests[message.topic] = hashlib.sha256(message.payload).hexdigest()
    if len(digests) == expected and not done.is_set():
        last[0] = time.monotonic()
        done.set()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
client.connect("127.0.0.1", port)
client.loop_start()
print(f"done {last[0]!r}" if done.wait(float(sys.argv[4])) else "timeout", flush=True)
sys.stdin.read()
client.disconnect()
client.loop_stop()
json.dump({**stats, "digests": digests}, sys.stdout)
"""


# --- broker and subscriber --------------------------------------------------------------


@dataclass
class Received:
    messages: int
    not_retained: int
    not_qos1: int
    digests: dict[str, str]


class Subscriber:
    """The verifying subscriber process, subscribed to every device's `desired` topic."""

    def __init__(self, port: int, expected: int) -> None:
        self.expected = expected
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SUBSCRIBER,
                str(port),
                str(expected),
                FILTER,
                str(SUBSCRIBER_TIMEOUT),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == "ready", f"subscriber did not subscribe: {line!r} {self._stderr()}"

    def _stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read()[-2000:]

    def wait_done(self) -> float:
        """The monotonic time at which the last of the N topics arrived."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("done "):
            self.finish()
            pytest.fail(f"subscriber: {line!r} (fewer than {self.expected} topics)")
        return float(line.split()[1])

    def finish(self) -> Received:
        """Keep listening a moment (a duplicate would show), then collect what arrived."""
        time.sleep(DUPLICATE_GRACE)
        out, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, err[-2000:]
        return Received(**json.loads(out))


def _check(received: Received, expected: dict[str, str]) -> None:
    n = len(expected)
    assert len(received.digests) == n, f"{len(received.digests)} topics received, not {n}"
    assert received.messages == n, f"{received.messages} messages for {n} topics"
    assert received.not_retained == 0, f"{received.not_retained} messages not retained"
    assert received.not_qos1 == 0, f"{received.not_qos1} messages not at QoS 1"
    wrong = [t for t, digest in expected.items() if received.digests.get(t) != digest]
    assert not wrong, f"{len(wrong)} topics with other bytes, e.g. {wrong[:3]}"


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


# --- the two sides --------------------------------------------------------------------


@dataclass
class Run:
    director: float
    publishing: float
    total: float


def _inflight() -> int:
    """The bridge's max_inflight (the broker's Receive Maximum is larger): the reference's too."""
    return BridgeConfig.from_settings().max_inflight


def reference(port: int, payloads: dict[str, bytes], subscriber: Subscriber) -> float:
    """A bare paho client: connect, publish everything retained at QoS 1, await PUBACKs."""
    acked: list[int] = []
    all_acked = threading.Event()
    connected = threading.Event()
    done_at = [0.0]

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, *args: Any) -> None:
        acked.append(mid)
        if len(acked) == len(payloads):
            done_at[0] = time.monotonic()
            all_acked.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"ref-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(_inflight())
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *args: connected.set()
    started = time.monotonic()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(10), "reference client did not connect"
        for topic, payload in payloads.items():
            info = client.publish(topic, payload, qos=1, retain=True)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        assert all_acked.wait(SUBSCRIBER_TIMEOUT), f"{len(acked)} PUBACKs of {len(payloads)}"
        last = subscriber.wait_done()
        return max(done_at[0], last) - started
    finally:
        client.disconnect()
        client.loop_stop()


def _queued(devices: list[Device]) -> QuerySet[DesiredOutbox]:
    """The outbox queue's rows of these devices, as one range scan of its primary key.

    Devices and their desired states are created in bulk, so the desired states' pks are a
    range too (checked here, once). The query is polled every 2 ms, in the bridge's
    process in the sequential set-up: a join there slowed the bridge it waits for.
    """
    rows = DesiredState.objects.filter(device_id__gte=devices[0].pk, device_id__lte=devices[-1].pk)
    span = rows.aggregate(lo=Min("pk"), hi=Max("pk"), n=Count("pk"))
    assert span["n"] == len(devices) == span["hi"] - span["lo"] + 1, span
    return DesiredOutbox.objects.filter(pk__gte=span["lo"], pk__lte=span["hi"])


def _wait_published(devices: list[Device], subscriber: "Subscriber") -> float:
    """When the subscriber had every topic and every row was marked published."""
    last = subscriber.wait_done()
    queued = _queued(devices)
    while queued.exists():
        time.sleep(0.002)
    return max(time.monotonic(), last)


def measured(port: int, devices: list[Device], artifact: Artifact, subscriber: Subscriber) -> Run:
    """Director then bridge, the real code: until the rows are marked and all arrived."""
    config = BridgeConfig.from_settings(
        url=f"mqtt://127.0.0.1:{port}", client_id=f"bridge-{uuid.uuid4().hex[:8]}"
    )
    started = time.monotonic()
    result = devices_desired_set(
        devices=devices, assignments_for=lambda d: [ModelAssignment(artifact=artifact)]
    )
    signed = time.monotonic()
    assert result.issued == len(devices), result.refused
    # tests/conftest.py sets FLEET_DB_CONN_MAX_AGE=0 for the whole suite, which would make
    # the outbox reconnect to the database on every step; the bridge's threads get the
    # production default, as the bridge process has.
    db = connection.settings_dict
    max_age, db["CONN_MAX_AGE"] = db["CONN_MAX_AGE"], PRODUCTION_CONN_MAX_AGE
    bridge = Bridge(config)
    bridge.start()
    try:
        ended = _wait_published(devices, subscriber)
    finally:
        bridge.stop()
        db["CONN_MAX_AGE"] = max_age
    return Run(director=signed - started, publishing=ended - signed, total=ended - started)


def overlapped(
    broker: MosquittoBroker, devices: list[Device], artifact: Artifact, subscriber: Subscriber
) -> Run:
    """As deployed: `manage.py bridge` already running, publishing each batch of 1000 rows
    the director commits while it signs the next. `publishing` is what is left after
    the director returns."""
    with BridgeProcess(broker, Path(broker.directory) / "bridge"):
        started = time.monotonic()
        result = devices_desired_set(
            devices=devices, assignments_for=lambda d: [ModelAssignment(artifact=artifact)]
        )
        signed = time.monotonic()
        assert result.issued == len(devices), result.refused
        ended = _wait_published(devices, subscriber)
    return Run(director=signed - started, publishing=ended - signed, total=ended - started)


def _subprocess_database_url() -> str:
    """The test database, for the bridge process (as tests/fleet/bridge_harness.py)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        path = Path(str(db["NAME"])).resolve()
        return f"sqlite:///{path}?timeout=20&transaction_mode=IMMEDIATE"
    assert connection.vendor == "postgresql", connection.vendor
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return (
        f"postgres://{db['USER'] or ''}{password}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}"
    )


class BridgeProcess:
    """`manage.py bridge` against the broker and the test database, with the production
    defaults (FLEET_DB_CONN_MAX_AGE included); connected on entry, stopped on exit."""

    def __init__(self, broker: MosquittoBroker, data_dir: Path) -> None:
        data_dir.mkdir(parents=True)
        self.log = data_dir / "bridge.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FLEET_DATA_DIR": str(data_dir),
            "DATABASE_URL": _subprocess_database_url(),
            # As deployed: without DEBUG, whose cursor wrapper logs and keeps every query.
            "DJANGO_DEBUG": "false",
        }
        args = ["--url", f"mqtt://127.0.0.1:{broker.port}", "--client-id", "bench-bridge"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "bridge", *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def __enter__(self) -> "BridgeProcess":
        deadline = time.monotonic() + 60
        while "bridge connected to" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the bridge did not connect:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# --- set-up ---------------------------------------------------------------------------


def _devices(prefix: str, n: int, artifact: Artifact) -> list[Device]:
    """N devices whose outbox rows exist and are published: a fleet before a rollout tick."""
    Device.objects.bulk_create(
        Device(device_id=f"{prefix}-{i:05d}", hardware=HARDWARE) for i in range(n)
    )
    devices = list(Device.objects.filter(device_id__startswith=f"{prefix}-").order_by("pk"))
    devices_desired_set(devices=devices, assignments_for=lambda d: [ModelAssignment(artifact)])
    DesiredState.objects.filter(device__in=devices).update(published_seq=F("seq"))
    DesiredOutbox.objects.filter(desired__device__in=devices).delete()
    return devices


@contextmanager
def _side(directory: Path, expected: int) -> Iterator[tuple[MosquittoBroker, Subscriber]]:
    broker = bench_broker(directory)
    try:
        yield broker, Subscriber(broker.port, expected)
    finally:
        broker.stop()


@dataclass
class Figures:
    n: int
    reference: list[float] = field(default_factory=list)
    sequential: list[Run] = field(default_factory=list)
    overlapped: list[Run] = field(default_factory=list)


def _round(
    tmp_path: Path,
    label: str,
    devices: list[Device],
    artifacts: tuple[Artifact, Artifact],
    figures: Figures,
) -> None:
    """Reference, then the real system in both set-ups, each on a fresh broker; all checked."""
    payloads = envelopes(devices)
    with _side(tmp_path / f"{label}-ref", len(devices)) as (broker, subscriber):
        figures.reference.append(reference(broker.port, payloads, subscriber))
        _check(subscriber.finish(), {t: _digest(p) for t, p in payloads.items()})
    for kind, artifact in zip(("sequential", "overlapped"), artifacts, strict=True):
        # Each fresh broker stands for one that kept what it was sent: without this the
        # bridge finds no sentinel and publishes every earlier round's envelopes again
        # (fleet/bridge/sentinel.py).
        DesiredState.objects.update(published_at=None)
        with _side(tmp_path / f"{label}-{kind}", len(devices)) as (broker, subscriber):
            if kind == "sequential":
                figures.sequential.append(measured(broker.port, devices, artifact, subscriber))
            else:
                figures.overlapped.append(overlapped(broker, devices, artifact, subscriber))
            received = subscriber.finish()
        published = envelopes(devices)
        assert published.keys() == payloads.keys()
        assert published != payloads, "the director did not re-sign"
        _check(received, {t: _digest(p) for t, p in published.items()})
        assert not _queued(devices).exists()
        assert not DesiredState.objects.filter(
            device__in=devices, published_seq__lt=F("seq")
        ).exists()
        payloads = published


# --- report ---------------------------------------------------------------------------


def _row(n: int, label: str, values: list[float]) -> str:
    median = statistics.median(values)
    runs = " ".join(f"{v:.2f}" for v in values)
    return f"  {label:<46}{median:6.2f} s {n / median:7.0f}/s  [{runs}]"


def _lines(f: Figures) -> list[str]:
    ref = statistics.median(f.reference)

    def median(runs: list[Run], get: Callable[[Run], float]) -> float:
        return statistics.median(get(r) for r in runs)

    def per_run(runs: list[Run]) -> str:
        return " ".join(f"{r.total / s:.2f}" for r, s in zip(runs, f.reference, strict=True))

    seq, ovl = f.sequential, f.overlapped
    return [
        f"N = {f.n:,} devices, {len(f.reference)} interleaved rounds, medians [runs]:",
        _row(f.n, "bare paho, retained QoS 1 (reference):", f.reference),
        "  sequential: director, then the bridge started against the backlog",
        _row(f.n, "  director (check, sign, write outbox rows):", [r.director for r in seq]),
        _row(f.n, "  bridge publishing (until all marked):", [r.publishing for r in seq]),
        _row(f.n, "  total:", [r.total for r in seq]),
        "  overlapped: `manage.py bridge` running while the director writes",
        _row(f.n, "  director (bridge publishing meanwhile):", [r.director for r in ovl]),
        _row(f.n, "  after the director returned:", [r.publishing for r in ovl]),
        _row(f.n, "  total:", [r.total for r in ovl]),
        f"  publishing/bare-paho ratio (sequential) = "
        f"{median(seq, lambda r: r.publishing) / ref:.2f}",
        f"  total/bare-paho time ratio, sequential = {median(seq, lambda r: r.total) / ref:.2f}"
        f" (goal <= {RATIO_GOAL}); per round {per_run(seq)}",
        f"  total/bare-paho time ratio, overlapped = {median(ovl, lambda r: r.total) / ref:.2f}"
        f" (goal <= {RATIO_GOAL}); per round {per_run(ovl)}",
    ]


@pytest.mark.timeout(900)
def test_desired_state_to_n_devices_vs_bare_paho(
    settings: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a director key of the test's own, a model with two versions per round, and
    # a warm process (imports, key, first connections) from a small round
    settings.FLEET_KEYS_DIR = tmp_path / "keys"
    settings.FLEET_KEYS_DIR.mkdir()
    director_private_key()
    artifacts = kws_artifacts(username="bench", count=2 * RUNS + 3)
    warm = _devices("warm", WARMUP_DEVICES, artifacts[0])
    _round(tmp_path, "warm", warm, (artifacts[1], artifacts[2]), Figures(WARMUP_DEVICES))

    report: list[Figures] = []
    for n in SIZES:
        # given N devices that already have a published desired state
        devices = _devices(f"n{n}", n, artifacts[0])
        figures = Figures(n)
        # when the reference and the real system send N envelopes, interleaved
        for run in range(RUNS):
            pair = (artifacts[2 * run + 3], artifacts[2 * run + 4])
            _round(tmp_path, f"n{n}-{run}", devices, pair, figures)
        # then (checked in _round) every device's envelope arrived once, retained, QoS 1
        report.append(figures)

    size = len(next(iter(envelopes(warm).values())))
    with capsys.disabled():
        print(
            f"\ndesired-state benchmark [{connection.vendor}], {os.cpu_count()} CPUs, "
            f"envelopes of {size} bytes, {_inflight()} publishes in flight per "
            f"publisher, a fresh Mosquitto per run"
        )
        for figures in report:
            print("\n".join(_lines(figures)))
