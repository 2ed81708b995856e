"""Telemetry ingest benchmark (issue 5): MQTT -> rows committed, against references doing
the same work in the same run.

1. End to end: N telemetry messages (QoS 1, SAMPLES samples of two metrics each) wait in
   a real Mosquitto for two persistent sessions; a bare paho subscriber drains one, the
   bridge (in this process, as `manage.py bridge` runs it) drains the other until every
   row is committed. Ratio bridge/bare, goal >= 0.25.
2. Metrics on vs off: the bridge drains alternate between normal runs and runs with
   every Prometheus call of the ingest path replaced by a no-op; and the same for the
   bridge's worker alone on messages already received (no broker in the way, so less
   noise). Ratio, goal >= 0.95.
3. Database write stage: the same rows through the sink (`TelemetryIngest.add` +
   `flush`, one transaction per bridge batch) against a raw psycopg binary COPY of the
   same rows with the same batches and commits. Ratio, goal >= 0.5.

Only correctness is asserted (every row committed, nothing dropped), never a ratio: the
machine is shared and noisy. Run: `pytest tests/bench/test_bench_ingest.py -m bench -s`
(with DATABASE_URL for PostgreSQL); see docs/benchmarks.md.
"""

import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from django.db import connection, transaction
from django.utils import timezone
from mqtt_broker import MosquittoBroker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.metrics import MetricWrapperBase

from device_agent.protocol.messages import TelemetryBatch, TelemetrySample, parse_telemetry
from device_agent.protocol.topics import Channel, subscription_filter, topic_for
from fleet.bridge.client import InboundMessage
from fleet.bridge.config import BridgeConfig, BrokerAddress
from fleet.bridge.handlers import Dispatcher
from fleet.bridge.runner import Bridge
from fleet.bridge.worker import InboundWorker
from fleet.models import Device
from ota.models import Model
from telemetry import metrics
from telemetry.ingest import COPY_TYPES, TelemetryIngest, copy_sql, rows_write
from telemetry.models import ReceivedBatch

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]

MESSAGES = 10_000
SAMPLES = 10  # per message, two metrics each
DEVICES = 50
ORDER = (True, False, False, True, True, False)  # metrics on/off, ABBA against drift
BATCH_MESSAGES = 500  # the bridge's default FLEET_BRIDGE_BATCH_SIZE
RECEIVE_MAXIMUM = 1000  # the bridge's default; the bare subscriber gets the same
E2E_GOAL, METRICS_GOAL, WRITE_GOAL = 0.25, 0.95, 0.5
BROKER_CONFIG = (
    "allow_anonymous true\n"
    "max_queued_messages 0\n"  # keep every message for the offline sessions
    "max_queued_bytes 0\n"
    "max_inflight_messages 0\n"  # flow control by the client's Receive Maximum only
)


# --- workload ---------------------------------------------------------------------------------


def _payloads() -> list[tuple[str, bytes]]:
    now = timezone.now().replace(microsecond=0)
    out = []
    for i in range(MESSAGES):
        device_id = f"bench-{i % DEVICES:03d}"
        arm = "A" if i % 2 else "B"
        samples = tuple(
            TelemetrySample(
                model="kws",
                version="1.3.0" if arm == "A" else "1.4.0",
                rollout_id="r-bench",
                arm=arm,
                # i // DEVICES in the confidence makes each of a device's payloads unique:
                # ingest stores a payload it has seen before only once.
                metrics={
                    "latency_ms": 10.0 + (i * 7 + j) % 40,
                    "confidence": 0.5 + j / 40 + (i // DEVICES) * 1e-6,
                },
                ts=now - timedelta(seconds=j),
            )
            for j in range(SAMPLES)
        )
        out.append(
            (topic_for(device_id, Channel.TELEMETRY), TelemetryBatch(samples=samples).to_json())
        )
    return out


def _session_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    return properties


def _client(client_id: str) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    return client


def _preload(port: int, payloads: list[tuple[str, bytes]]) -> None:
    """Publish every message at QoS 1 while both subscribers are offline."""
    client = _client(f"pub-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, body, qos=1) for topic, body in payloads]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


class BareSubscriber:
    """The reference: a paho client that counts telemetry messages and does nothing else."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client_id = f"bare-{uuid.uuid4().hex[:6]}"
        self.received = 0
        self.done = threading.Event()
        self.target = 0
        self._subscribed = threading.Event()

    def _connect(self) -> mqtt.Client:
        client = _client(self.client_id)

        def on_message(c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
            self.received += 1
            if self.received >= self.target:
                self.done.set()

        client.on_message = on_message
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.connect("127.0.0.1", self.port, clean_start=False, properties=_session_properties())
        return client

    def create_session(self) -> None:
        client = self._connect()
        client.loop_start()
        client.subscribe(subscription_filter(Channel.TELEMETRY), qos=1)
        assert self._subscribed.wait(10)
        client.disconnect()
        client.loop_stop()

    def drain(self, n: int) -> tuple[float, float]:
        """Seconds from connecting to the n-th message: (wall clock, this process's CPU)."""
        self.received, self.target = 0, n
        self.done.clear()
        started, cpu = time.perf_counter(), time.process_time()
        client = self._connect()
        client.loop_start()
        assert self.done.wait(120), f"bare subscriber got {self.received} of {n}"
        seconds = time.perf_counter() - started, time.process_time() - cpu
        client.disconnect()
        client.loop_stop()
        return seconds


class CountingIngest(TelemetryIngest):
    """The production sink, counting committed samples in a plain int (no metric needed)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stored = 0
        self.done = threading.Event()
        self.target = 0

    def write(self, taken: Any) -> None:
        samples = taken.samples
        super().write(taken)
        transaction.on_commit(lambda: self._count(samples))

    def _count(self, samples: int) -> None:
        self.stored += samples
        if self.stored >= self.target:
            self.done.set()


class _Null:
    """Stands in for every metric object when metrics are off."""

    def labels(self, *args: object) -> "_Null":
        return self

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


_METRIC_NAMES = [
    name
    for name in dir(metrics)
    if name.isupper()
    and isinstance(getattr(metrics, name), MetricWrapperBase | metrics.BatchHistogram)
]


@contextmanager
def _metrics_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as patch:
        for name in _METRIC_NAMES:
            patch.setattr(metrics, name, _Null())
        yield


def _sink(*, observe: bool) -> CountingIngest:
    return CountingIngest(
        max_age=timedelta(days=1),
        max_future=timedelta(minutes=10),
        model_cache_seconds=60,
        observe_models=observe,
    )


def _bridge_config(port: int, client_id: str) -> BridgeConfig:
    return BridgeConfig(
        broker=BrokerAddress(host="127.0.0.1", port=port, tls=False, username=None, password=None),
        client_id=client_id,
        receive_maximum=RECEIVE_MAXIMUM,
        batch_size=BATCH_MESSAGES,
    )


def _bridge_drain(port: int, client_id: str, sink: CountingIngest, n: int) -> tuple[float, float]:
    """Seconds from starting the bridge to its n-th sample committed: (wall clock, this
    process's CPU, which is the bridge's: nothing else runs here meanwhile)."""
    sink.target, sink.stored = n, 0
    sink.done.clear()
    bridge = Bridge(_bridge_config(port, client_id), telemetry=sink)
    started, cpu = time.perf_counter(), time.process_time()
    bridge.start()
    try:
        assert sink.done.wait(300), f"bridge committed {sink.stored} of {n} samples"
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        bridge.stop()


def _truncate() -> None:
    # Ingest remembers the batches it stored and drops a redelivered one as a duplicate:
    # forget them too, so that each round stores the same payloads again.
    tables = ("telemetry_sample", ReceivedBatch._meta.db_table)
    with connection.cursor() as cursor:
        for table in tables:
            if connection.vendor == "postgresql":
                cursor.execute(f"TRUNCATE {table}")
            else:
                cursor.execute(f"DELETE FROM {table}")  # noqa: S608 - our own table names


def _row_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_sample")
        return int(cursor.fetchone()[0])


# --- the benchmark ----------------------------------------------------------------------------


@pytest.fixture
def fleet() -> dict[str, int]:
    Model.objects.create(name="kws")
    return {
        d.device_id: d.pk
        for d in Device.objects.bulk_create(
            [
                Device(device_id=f"bench-{i:03d}", hardware="linux-x86_64-fp32")
                for i in range(DEVICES)
            ]
        )
    }


def test_ingest_end_to_end_against_a_bare_subscriber(
    tmp_path: Path, fleet: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = MosquittoBroker(tmp_path / "broker", BROKER_CONFIG, persistence=False)
    try:
        payloads = _payloads()
        samples = MESSAGES * SAMPLES
        bare = BareSubscriber(broker.port)
        bare.create_session()
        bridge_id = f"bridge-{uuid.uuid4().hex[:6]}"
        first = Bridge(_bridge_config(broker.port, bridge_id), telemetry=_sink(observe=True))
        first.start()
        assert first.wait_subscribed(10)
        first.stop()

        _preload(broker.port, payloads)  # warm-up round, not counted
        bare.drain(MESSAGES)
        _bridge_drain(broker.port, bridge_id, _sink(observe=True), samples)

        runs: dict[str, list[tuple[float, float]]] = {"bare": [], "on": [], "off": []}
        for round_no, metrics_on in enumerate(ORDER):
            _truncate()
            _preload(broker.port, payloads)
            runs["bare"].append(bare.drain(MESSAGES))
            if metrics_on:
                run = _bridge_drain(broker.port, bridge_id, _sink(observe=True), samples)
            else:
                with _metrics_off(monkeypatch):
                    run = _bridge_drain(broker.port, bridge_id, _sink(observe=False), samples)
            runs["on" if metrics_on else "off"].append(run)
            assert _row_count() == samples * 2, "every row committed, nothing dropped"
            print(
                f"\n  round {round_no + 1}: bare {MESSAGES / runs['bare'][-1][0]:,.0f} msg/s, "
                f"bridge (metrics {'on' if metrics_on else 'off'}) {MESSAGES / run[0]:,.0f} msg/s"
            )

        rate = {k: MESSAGES / statistics.median(w for w, _ in v) for k, v in runs.items()}
        cpu = {k: statistics.median(c for _, c in v) * 1e6 / MESSAGES for k, v in runs.items()}
        print(
            f"\nend to end ({connection.vendor}, {MESSAGES} QoS 1 messages x {SAMPLES} samples x "
            f"2 metrics, medians of {len(ORDER) // 2}-{len(ORDER)} drains):\n"
            f"  bare paho subscriber        {rate['bare']:8,.0f} msg/s, "
            f"{cpu['bare']:5.0f} us CPU/msg\n"
            f"  bridge -> rows committed    {rate['on']:8,.0f} msg/s, {cpu['on']:5.0f} us CPU/msg "
            f"({rate['on'] * SAMPLES:,.0f} samples/s, {rate['on'] * SAMPLES * 2:,.0f} rows/s)\n"
            f"  bridge/bare ratio = {rate['on'] / rate['bare']:.2f} (goal >= {E2E_GOAL})\n"
            f"  bridge, metrics off         {rate['off']:8,.0f} msg/s, "
            f"{cpu['off']:5.0f} us CPU/msg\n"
            f"  metrics on/off ratio = {rate['on'] / rate['off']:.2f} (goal >= {METRICS_GOAL}); "
            f"by CPU time {cpu['off'] / cpu['on']:.2f}"
        )
    finally:
        broker.stop()


def test_database_write_stage_against_raw_copy(fleet: dict[str, int]) -> None:
    batches = [parse_telemetry(body) for _, body in _payloads()]
    devices = [Device(pk=fleet[f"bench-{i % DEVICES:03d}"]) for i in range(MESSAGES)]
    received = timezone.now()
    chunks = range(0, MESSAGES, BATCH_MESSAGES)
    raw_batches = [
        [
            (devices[i].pk, s.ts, s.model, s.version, s.rollout_id or "", s.arm or "", name, value)
            for i in range(start, min(start + BATCH_MESSAGES, MESSAGES))
            for s in batches[i].samples
            for name, value in s.metrics.items()
        ]
        for start in chunks
    ]
    rows = sum(len(b) for b in raw_batches)

    def raw() -> None:
        for batch_rows in raw_batches:
            with transaction.atomic():
                if connection.vendor == "postgresql":
                    with connection.cursor() as cursor, cursor.cursor.copy(copy_sql()) as copy:
                        copy.set_types(COPY_TYPES)
                        for row in batch_rows:
                            copy.write_row(row)
                else:
                    rows_write(batch_rows)  # SQLite: the same executemany

    def sink() -> None:
        ingest = TelemetryIngest(
            max_age=timedelta(days=1), max_future=timedelta(minutes=10), model_cache_seconds=60
        )
        for start in chunks:
            with transaction.atomic():
                for i in range(start, min(start + BATCH_MESSAGES, MESSAGES)):
                    ingest.add(device=devices[i], batch=batches[i], received_at=received)
                ingest.flush()

    timings: dict[str, list[float]] = {"raw": [], "sink": []}
    for _ in range(3):
        for name, run in (("raw", raw), ("sink", sink)):
            _truncate()
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
            assert _row_count() == rows
    raw_rate = rows / statistics.median(timings["raw"])
    sink_rate = rows / statistics.median(timings["sink"])
    reference = "psycopg binary COPY" if connection.vendor == "postgresql" else "executemany"
    print(
        f"\ndatabase write stage ({connection.vendor}, {rows:,} rows in batches of "
        f"{BATCH_MESSAGES} messages, median of 3):\n"
        f"  raw {reference:22s} {raw_rate:10,.0f} rows/s\n"
        f"  sink add + flush + commit   {sink_rate:10,.0f} rows/s\n"
        f"  sink/raw ratio = {sink_rate / raw_rate:.2f} (goal >= {WRITE_GOAL})"
    )


def test_ingest_stage_with_metrics_on_and_off(
    fleet: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge's worker on messages already received (no broker noise): metrics on vs
    off, interleaved."""
    received = timezone.now()
    messages = [
        InboundMessage(
            topic=topic,
            payload=body,
            qos=1,
            retain=False,
            mid=i,
            generation=1,
            received_at=received,
        )
        for i, (topic, body) in enumerate(_payloads())
    ]

    def run(observe: bool) -> tuple[float, float]:
        worker = InboundWorker(
            dispatcher=Dispatcher(telemetry=_sink(observe=observe), device_cache_seconds=60),
            ack=lambda message: True,
            queue_size=MESSAGES,
            batch_size=BATCH_MESSAGES,
            seen_flush_seconds=60,
        )
        _truncate()
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, MESSAGES, BATCH_MESSAGES):
            # Both stages in this thread, one after the other: the CPU per message is the
            # point here, not the overlap of the worker and writer threads.
            checked = worker._check(messages[start : start + BATCH_MESSAGES])
            assert checked is not None
            worker._store(checked)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert _row_count() == MESSAGES * SAMPLES * 2
        return MESSAGES / seconds, cpu * 1e6 / MESSAGES

    run(True)  # warm-up
    on, off = [], []
    for metrics_on in ORDER:
        if metrics_on:
            on.append(run(True))
        else:
            with _metrics_off(monkeypatch):
                off.append(run(False))
    on_rate, off_rate = (statistics.median(r for r, _ in runs) for runs in (on, off))
    on_cpu, off_cpu = (statistics.median(c for _, c in runs) for runs in (on, off))
    print(
        f"\ningest stage ({connection.vendor}, the bridge's worker on {MESSAGES} received "
        f"messages, medians of {len(ORDER) // 2}):\n"
        f"  metrics on   {on_rate:8,.0f} msg/s, {on_cpu:5.0f} us CPU/msg\n"
        f"  metrics off  {off_rate:8,.0f} msg/s, {off_cpu:5.0f} us CPU/msg\n"
        f"  metrics on/off ratio = {on_rate / off_rate:.2f} (goal >= {METRICS_GOAL}); "
        f"by CPU time {off_cpu / on_cpu:.2f}"
    )
