"""The fault-injection suite's rig (issue 16, `-m faults`): the rollout system of
rollout_system.py (PostgreSQL, Mosquitto, gunicorn, the bridge, a Celery worker with beat
on Redis, real fleet-agent processes) with each part killable, and the accounting that
says nothing was lost:

- every `events` and `telemetry` payload an agent hands to MQTT is appended to
  ``sent/<device>.jsonl`` (device_agent/testhooks.py, FLEET_AGENT_SENT_LOG_DIR);
- `assert_nothing_lost` compares, per device, the events sent with the events stored
  (seq, phase, progress, code, detail, ts: exactly, no row twice), the telemetry samples
  sent with the samples stored, every device's installed bytes and reported version
  with the rollout's, every rollout row with `succeeded`, and every retained `desired`
  message on the broker with the device's current seq.

`running()` is the one way a test module starts and stops the system, and
`FaultSystem.scenario()` wraps each scenario. When a scenario fails, tests/ota/conftest.py
has `keep_logs()` copy what explains it (every part's log, what the agents sent, their
state files, the rollout rows and events) to var/fault-logs/<test>-<time>/ and names that
directory in the failure report: the system's own directory is deleted with the session.
"""

import base64
import functools
import json
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from rollout_onnx import chain_onnx, selftest_meta
from rollout_system import ROOT, FleetSystem, wait_until
from service_check import require_module

from device_agent.metrics_client import send_datagram
from device_agent.protocol.messages import parse_event, parse_telemetry

DEVICES = 12
MODEL = "edge"
SENT_LOG_ENV = "FLEET_AGENT_SENT_LOG_DIR"
# Quick stages: a third of the fleet, two thirds, all; a short bake after each.
STAGES = [
    {"percent": 34, "bake_minutes": 0.1},
    {"percent": 67, "bake_minutes": 0.1},
    {"percent": 100},
]
POLICY = {"min_finished": 1, "rate_per_minute": 600}
TERMINAL = ("completed", "paused", "aborted", "rolled_back")

# Where the logs of a failed scenario are kept (var/ is the checkout's untracked state).
FAULT_LOGS = ROOT / "var" / "fault-logs"
# What of each agent's directory is kept: small, and says where the agent stood.
AGENT_FILES = ("config.json", "journal.json", "state.json", "events.json")

EventKey = tuple[int, str, str, str, int | None, str, str, str]
SampleKey = tuple[str, str, str, str, float]


class FaultSystem(FleetSystem):
    """The rollout system with every part killable and its sends accounted for."""

    def __init__(self, root: Path, *, protocol: str = "5") -> None:
        self.sent_dir = root / "sent"
        self.sent_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            root,
            devices=DEVICES,
            env={SENT_LOG_ENV: str(self.sent_dir), "FLEET_ROLLOUT_TICK_SECONDS": "5"},
            agent_config={
                "mqtt_protocol": protocol,
                "telemetry_batch_seconds": 0.5,
                "telemetry_qos": 1,
            },
        )
        self.minor = 0
        self.artifacts: dict[str, str] = {}  # version -> sha256
        # Where the current scenario began: lines of each sent log, last event and sample
        # rows. Each scenario accounts for its own sends (a loss in one is not the next's).
        self._sent_from: dict[str, int] = {}
        self._event_from = 0
        self._sample_from = 0

    def mark(self) -> None:
        """A scenario begins: count only what is sent and stored from now on."""
        self._sent_from = {d: len(_lines(self.sent_dir, d)) for d in self.device_ids()}
        self._event_from = self.scalars("SELECT coalesce(max(id), 0) FROM fleet_deviceevent")[0]
        self._sample_from = self.scalars("SELECT coalesce(max(id), 0) FROM telemetry_sample")[0]

    def device_ids(self) -> list[str]:
        return [f"flt-{i:03d}" for i in range(self.n_devices)]

    @contextmanager
    def scenario(self) -> Iterator[None]:
        """One scenario: its own accounting, then whatever it left killed or running is
        started again or aborted, so that the next one starts from a whole system."""
        self.mark()
        try:
            yield
        finally:
            if self.broker.process is None:
                self.broker.start()
            self.revive()
            self.abort_unfinished()

    def keep_logs(self, name: str) -> Path:
        """Copy what explains a failure to var/fault-logs/<name>-<time>/; that path."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        dest = FAULT_LOGS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{stamp}"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.logs, dest / "logs", dirs_exist_ok=True)
        shutil.copytree(self.sent_dir, dest / "sent", dirs_exist_ok=True)
        if self.broker.log_path.exists():
            shutil.copy2(self.broker.log_path, dest / "logs" / "mosquitto.log")
        for device_id in self.device_ids():
            source = self.device_dir(device_id)
            (dest / "devices" / device_id).mkdir(parents=True, exist_ok=True)
            for filename in AGENT_FILES:
                if (source / filename).exists():
                    shutil.copy2(source / filename, dest / "devices" / device_id / filename)
        (dest / "database.txt").write_text(self._database_dump())
        return dest

    def _database_dump(self) -> str:
        """The rollouts, their device rows and the latest events, as text."""
        lines: list[str] = []
        for title, sql in (
            ("rollouts", "SELECT id, status, current_stage FROM ota_rollout ORDER BY id"),
            (
                "rollout devices",
                "SELECT r.rollout_id, d.device_id, r.state, r.desired_seq, r.last_phase, "
                "r.last_code, r.phase_at FROM ota_rolloutdevice r "
                "JOIN fleet_device d ON d.id = r.device_id ORDER BY r.rollout_id, d.device_id",
            ),
            (
                "latest events",
                "SELECT d.device_id, e.seq, e.rollout_id, e.phase, e.progress, e.code, "
                "e.detail, e.ts, e.received_at FROM fleet_deviceevent e "
                "JOIN fleet_device d ON d.id = e.device_id ORDER BY e.id DESC LIMIT 500",
            ),
        ):
            lines.append(f"--- {title}")
            try:
                lines += [" | ".join(map(str, row)) for row in self.query(sql)]
            except Exception as exc:  # the dump must not hide the failure it explains
                lines.append(f"(query failed: {exc!r})")
        return "\n".join(lines) + "\n"

    # --- parts ----------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL a part (web, bridge, worker) or an agent, its whole process group."""
        (self.children.get(name) or self.agents[name]).kill()

    def start_again(self, name: str) -> None:
        child = self.children.get(name) or self.agents[name]
        child.start()
        if name == "web":
            wait_until(lambda: self.get("/healthz")["status"] == "ok", "the web server again")

    def set_protocol(self, protocol: str) -> None:
        """Every agent speaks `protocol` (3.1.1 or 5) from now on: stopped, told, started."""
        for device_id, agent in self.agents.items():
            agent.stop()
            config = self.device_dir(device_id) / "config.json"
            data = json.loads(config.read_text())
            config.write_text(json.dumps({**data, "mqtt_protocol": protocol}))
            agent.start()
        wanted = set(self.device_ids())
        wait_until(
            lambda: wanted <= set(self.scalars("SELECT device_id FROM fleet_device WHERE online")),
            f"every agent online with MQTT {protocol}",
        )

    # --- releases and rollouts ----------------------------------------------------------

    def release(self, tmp_path: Path, *, padding_mb: int = 0) -> str:
        """Publish the next version of MODEL (padded to about `padding_mb` MB); its version."""
        if not self.release_keys:
            self.model_register(MODEL)
        self.minor += 1
        version = f"1.{self.minor}.0"
        data, selftest = chain_onnx(layers=1, bias=0.5 + self.minor)
        if padding_mb:
            data = _padded(data, padding_mb)
        path = tmp_path / f"{MODEL}-{version}.onnx"
        path.write_bytes(data)
        self.artifacts[version] = self.publish(
            path, name=MODEL, version=version, meta=[selftest_meta(selftest)]
        )
        return version

    def rollout_start(self, version: str, **overrides: Any) -> str:
        body: dict[str, Any] = {
            "model": MODEL,
            "strategy": "phased",
            "version": version,
            "stages": STAGES,
            "policy": POLICY,
            "selection": {"all": True},
        }
        body.update(overrides)
        rollout = self.rollout_create(**body)
        self.post(f"/api/v1/rollouts/{rollout['id']}/start", {"reason": "faults"})
        return str(rollout["id"])

    def stage_opened(self, rollout_id: str, stage: int) -> bool:
        """Whether stage `stage` (1-based) has opened: the audit says so."""
        reasons = self.scalars(
            "SELECT reason FROM ota_rolloutauditevent WHERE rollout_id = %s", _pk(rollout_id)
        )
        return stage == 1 or any(r.startswith(f"stage {stage} (") for r in reasons)

    def revive(self) -> None:
        """Start again whatever a failed scenario left killed."""
        for name, child in [*self.children.items(), *self.agents.items()]:
            if not child.alive():
                self.start_again(name)

    def abort_unfinished(self) -> None:
        """Abort what a failed scenario left running, so the next one can start."""
        for rollout in self._all("/api/v1/rollouts/"):
            if rollout["status"] not in ("completed", "aborted", "rolled_back"):
                self.post(f"/api/v1/rollouts/{rollout['id']}/abort", {"reason": "faults cleanup"})

    def wait_finished(self, rollout_id: str, timeout: float = 240) -> str:
        def finished() -> str:
            status = self.rollout_status(rollout_id)
            return status if status in TERMINAL else ""

        try:
            return wait_until(finished, f"{rollout_id} to finish", timeout)
        except AssertionError:
            print(self.diagnostics())
            raise

    def devices_in(self, rollout_id: str, *states: str) -> int:
        return len(
            self.scalars(
                "SELECT device_id FROM ota_rolloutdevice WHERE rollout_id = %s AND state = ANY(%s)",
                _pk(rollout_id),
                list(states),
            )
        )

    def events_of(self, rollout_id: str, phase: str) -> int:
        return len(
            self.scalars(
                "SELECT id FROM fleet_deviceevent WHERE rollout_id = %s AND phase = %s",
                rollout_id,
                phase,
            )
        )

    def downloading(self, device_id: str, at_least: int) -> bool:
        """Whether the device has a partial download of at least `at_least` bytes."""
        parts = (self.device_dir(device_id) / "downloads").glob("*.part")
        return any(p.stat().st_size >= at_least for p in parts)

    # --- telemetry ------------------------------------------------------------------

    def report(self, device_id: str, count: int, *, start: int = 0) -> None:
        """Hand `count` samples of MODEL to the device's agent, as its application does."""
        socket_path = self.device_dir(device_id) / "metrics.sock"
        for i in range(start, start + count):
            payload = json.dumps(
                {"model": MODEL, "metrics": {"latency_ms": float(i)}, "ts": time.time()}
            ).encode()
            # The socket holds a few datagrams (net.unix.max_dgram_qlen): wait for room.
            wait_until(
                functools.partial(_sent_datagram, payload, socket_path), f"{device_id} to read"
            )

    def _sent(self, device_id: str) -> tuple[list[EventKey], Counter[SampleKey]]:
        lines = _lines(self.sent_dir, device_id)[self._sent_from.get(device_id, 0) :]
        return _parse_sent(lines)

    def samples_sent(self, device_id: str) -> int:
        """How many different samples the agent has sent (a batch it sends again until
        the server confirms it counts once)."""
        return len(self._sent(device_id)[1])

    # --- what was sent against what was stored ------------------------------------------

    def sent_events(self) -> dict[str, set[EventKey]]:
        return {d: set(self._sent(d)[0]) for d in self.device_ids()}

    def stored_events(self) -> dict[str, Counter[EventKey]]:
        stored: dict[str, Counter[EventKey]] = {d: Counter() for d in self.device_ids()}
        for row in self.query(
            "SELECT d.device_id, e.seq, e.rollout_id, e.model, e.phase, e.progress, e.code, "
            "e.detail, e.ts FROM fleet_deviceevent e JOIN fleet_device d ON d.id = e.device_id "
            "WHERE e.id > %s",
            self._event_from,
        ):
            device_id, seq, rollout_id, model, phase, progress, code, detail, ts = row
            stored[device_id][(seq, rollout_id, model, phase, progress, code, detail, _ts(ts))] += 1
        return stored

    def sent_samples(self) -> dict[str, Counter[SampleKey]]:
        return {d: self._sent(d)[1] for d in self.device_ids()}

    def stored_samples(self) -> dict[str, Counter[SampleKey]]:
        stored: dict[str, Counter[SampleKey]] = {d: Counter() for d in self.device_ids()}
        for device_id, ts, model, version, metric, value in self.query(
            "SELECT d.device_id, s.ts, s.model, s.version, s.metric, s.value "
            "FROM telemetry_sample s JOIN fleet_device d ON d.id = s.device_id WHERE s.id > %s",
            self._sample_from,
        ):
            stored[device_id][(_ts(ts), model, version, metric, float(value))] += 1
        return stored

    def retained_seqs(self) -> dict[str, int]:
        """The seq of every device's retained `desired` message on the broker."""
        return _retained_seqs(self.broker.port, len(self.device_ids()))

    def current_seqs(self) -> dict[str, int]:
        return dict(
            self.query(
                "SELECT d.device_id, s.seq FROM fleet_desiredstate s "
                "JOIN fleet_device d ON d.id = s.device_id"
            )
        )

    def assert_nothing_lost(self, rollout_id: str, version: str) -> None:
        """The invariants of issue 16 after a fault (see the module docstring)."""
        devices = self.device_ids()
        # the rollout finished, and no row of it is left in flight
        assert self.wait_finished(rollout_id) == "completed", self.rollout(rollout_id)
        states = dict(
            self.query(
                "SELECT d.device_id, r.state FROM ota_rolloutdevice r "
                "JOIN fleet_device d ON d.id = r.device_id WHERE r.rollout_id = %s",
                _pk(rollout_id),
            )
        )
        assert states == dict.fromkeys(devices, "succeeded"), f"rollout rows: {states}"
        # every device runs the version and says so
        sha = self.artifacts[version]
        installed = {d: self.installed(d, MODEL) for d in devices}
        assert installed == dict.fromkeys(devices, sha), f"installed: {installed}"
        wait_until(
            lambda: all(self.reported_version(d, MODEL) == version for d in devices),
            f"every device reporting {version}",
            60,
        )
        # every event an agent sent is stored, once; nothing else is (and the log of what
        # was sent has this rollout's outcome of every device: it does record)
        sent = self.sent_events()
        committed = {
            d for d in devices for e in sent[d] if e[1] == rollout_id and e[3] == "committed"
        }
        assert committed == set(devices), f"committed events sent by: {sorted(committed)}"
        self.assert_stored("events", self.sent_events, self.stored_events)
        # every telemetry sample an agent sent is stored, once
        self.assert_stored("samples", self.sent_samples, self.stored_samples)
        # the broker holds every device's current desired state
        wait_until(
            lambda: self.retained_seqs() == self.current_seqs(),
            "every retained desired state at the current seq",
            60,
        )

    def assert_stored(self, what: str, sent: Any, stored: Any) -> None:
        def same() -> bool:
            want, have = sent(), stored()
            return all(set(have[d]) == set(want[d]) for d in self.device_ids())

        try:
            wait_until(same, f"every {what} sent to be stored", 60)
        except AssertionError:
            want, have = sent(), stored()
            missing = {d: sorted(set(want[d]) - set(have[d]))[:5] for d in self.device_ids()}
            extra = {d: sorted(set(have[d]) - set(want[d]))[:5] for d in self.device_ids()}
            raise AssertionError(
                f"{what} sent but not stored: {_nonempty(missing)}; "
                f"stored but never sent: {_nonempty(extra)}"
            ) from None
        twice = _nonempty({d: [k for k, n in c.items() if n > 1] for d, c in stored().items()})
        assert not twice, f"{what} stored twice: {twice}"


@contextmanager
def running(root: Path, *, protocol: str = "5") -> Iterator[FaultSystem]:
    """The fault system started in `root` for a module's scenarios, stopped after (its
    database dropped). If it does not start, its logs are kept and the place printed."""
    fleet = FaultSystem(root, protocol=protocol)
    try:
        fleet.start()
    except BaseException:
        print(fleet.diagnostics())
        print(f"fault rig logs kept in {fleet.keep_logs(f'{root.name}-start')}")
        fleet.stop()
        raise
    try:
        yield fleet
    finally:
        fleet.stop()


def _sent_datagram(payload: bytes, socket_path: Path) -> bool:
    try:
        send_datagram(payload, socket_path=socket_path)
    except BlockingIOError:
        return False
    return True


def _pk(rollout_id: str) -> int:
    """The database key of a rollout's public id ``r-<pk>``."""
    return int(rollout_id.removeprefix("r-"))


def _nonempty(by_device: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {d: v for d, v in by_device.items() if v}


def _ts(value: Any) -> str:
    return str(value.astimezone(UTC).isoformat(timespec="microseconds"))


def _lines(directory: Path, device_id: str) -> list[str]:
    try:
        return (directory / f"{device_id}.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []


def _parse_sent(lines: list[str]) -> tuple[list[EventKey], Counter[SampleKey]]:
    events: list[EventKey] = []
    samples: Counter[SampleKey] = Counter()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: never handed to MQTT
        payload = record["payload"].encode()
        if record["channel"] == "events":
            event = parse_event(payload)
            events.append(
                (
                    event.seq,
                    event.rollout_id or "",
                    event.model or "",
                    str(event.phase),
                    event.progress,
                    str(event.code) if event.code else "",
                    event.detail,
                    _ts(event.ts),
                )
            )
        else:
            batch = parse_telemetry(payload)
            for sample in batch.samples:
                for metric, value in sample.metrics.items():
                    samples[(_ts(sample.ts), sample.model, sample.version, metric, value)] += 1
    return events, samples


def _retained_seqs(port: int, expected: int, timeout: float = 10.0) -> dict[str, int]:
    """Subscribe to every `desired` topic; each retained envelope's seq, by device."""
    seqs: dict[str, int] = {}
    lock = threading.Lock()
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.retain:
            return
        envelope = json.loads(message.payload)
        payload = json.loads(base64.b64decode(envelope["payload"]))
        with lock:
            seqs[message.topic.split("/")[3]] = int(payload["seq"])
            if len(seqs) >= expected:
                done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe("fleet/v1/devices/+/desired", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return dict(seqs)


def _padded(model: bytes, megabytes: int) -> bytes:
    """The model with an unused initializer of `megabytes` MB: a big artifact that still
    loads and passes its self-test."""
    onnx = require_module("onnx", "pip install -e '.[dev]'")
    from onnx import numpy_helper

    numpy = require_module("numpy", "pip install -e '.[dev]'")
    proto = onnx.load_from_string(model)
    rng = numpy.random.default_rng(megabytes)
    pad = rng.integers(0, 255, size=megabytes * 1024 * 1024, dtype=numpy.uint8)
    proto.graph.initializer.append(numpy_helper.from_array(pad, name="padding"))
    return bytes(proto.SerializeToString())
