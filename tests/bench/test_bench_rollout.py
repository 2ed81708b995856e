"""Rollout benchmark (issue 6): N simulated devices through a 4-stage phased rollout on
the real system, against a bare paho publisher sending the same envelopes to the same
simulated devices in the same run; and a paced rollout against N / rate.

The real system, per run: PostgreSQL (the pytest-django test database), a fresh
Mosquitto, ``manage.py bridge`` and a Celery worker (``celery -A fleet worker --pool
solo`` with the beat embedded) as processes of their own on a Redis server of the
benchmark's own, configured by the environment as in production. The test process
creates the rollout and starts it through ``ota.rollouts`` (its Celery app pointed at
the same Redis, so the start's evaluation is queued like any other); from then on only
the deployed path runs: the worker evaluates (``rollout_evaluate_task``), signs through
the director and writes the outbox; the bridge publishes, stores the devices' events and
states and queues an evaluation after each batch with a decisive event; the beat ticks.

The devices are ``tests/bench/rollout_simulator.py`` processes: each holds a shard of the
device ids on one MQTT connection, subscribed to each device's own ``desired`` topic,
and answers every envelope as an agent does on the wire (DSSE signature verified with
the pinned director key, update events ``accepted`` and ``committed``, retained state
with the new version and ``last_seq``; all QoS 1).

- **phased**: stages 1 → 10 → 50 → 100 %, bake 0, no pacing; timed from the start call
  to every device's ``committed`` event stored in the database (all acknowledged), and
  to the rollout's ``completed``.
- **reference**: a fresh broker and fresh simulators; a bare paho client publishes the
  envelopes the rollout issued (retained, QoS 1, the bridge's 100 in flight) and a
  listener process waits until every device's ``committed`` event and state arrived.
- **paced**: N devices, one stage of 100 %, ``rate_per_minute`` R (no growth): the time
  from the start to the last notification and to all acknowledged, against N / R.

Prints figures and ratios (goals: phased/reference <= 2.0, paced/(N/R) <= 1.1), never
asserts a time. Asserts that every device committed the rollout's version, received
exactly one envelope for it with a valid signature, and that no device of a stage was
notified before every device of the stage before had finished; and, paced, that no
60 s window held more than R notifications.
Run: ``DATABASE_URL=postgres://... pytest tests/bench/test_bench_rollout.py -m bench -s``.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
import psutil
import pytest
from bench_fleet import HARDWARE, bench_broker, envelopes, kws_artifacts
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.db.models import F, QuerySet
from mqtt_broker import MosquittoBroker, free_port, wait_for_port
from service_check import require_service

from device_agent.protocol.messages import ModelState, Phase, ReportedState, Slot
from fleet.director import ModelAssignment, devices_desired_set
from fleet.keys import director_private_key, director_public_pem
from fleet.models import DesiredOutbox, DesiredState, Device, DeviceEvent, Group
from ota import rollouts
from ota.models import Artifact, Rollout, RolloutDevice, RolloutStatus

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]
SIMULATOR = Path(__file__).with_name("rollout_simulator.py")
SIZES = tuple(int(n) for n in os.environ.get("BENCH_ROLLOUT_SIZES", "1000,10000").split(","))
RUNS = int(os.environ.get("BENCH_ROLLOUT_RUNS", "3"))
SIMULATORS = int(os.environ.get("BENCH_ROLLOUT_SIMULATORS", "2"))
TICK_SECONDS = int(os.environ.get("BENCH_ROLLOUT_TICK_SECONDS", "30"))  # the settings' default
PACED_N = int(os.environ.get("BENCH_ROLLOUT_PACED_N", "1000"))
BRIDGES = int(os.environ.get("BENCH_ROLLOUT_BRIDGES", "1"))  # replicas of the bridge
PACED_RATE = float(os.environ.get("BENCH_ROLLOUT_PACED_RATE", "1200"))  # per minute
PYSPY = os.environ.get("BENCH_ROLLOUT_PYSPY", "")
TRACE = os.environ.get("BENCH_ROLLOUT_TRACE", "") == "1"
STAGES: list[dict[str, float]] = [
    {"percent": 1},
    {"percent": 10},
    {"percent": 50},
    {"percent": 100},
]
# The highest rate a policy takes (ota.rollout_config.MAX_RATE_PER_MINUTE) and a burst of
# every device: no pacing.
UNPACED = {
    "rate_per_minute": 1_000_000,
    "rate_max_per_minute": 1_000_000,
    "rate_burst": 1_000_000,
}
PHASED_GOAL, PACED_GOAL = 2.0, 1.1
INFLIGHT = 100  # the bridge's max_inflight default: the reference publisher's too
RUN_TIMEOUT = 600.0


# --- processes --------------------------------------------------------------------------


class Child:
    """A child process writing to its own log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.name} did not log {text!r}:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Redis:
    """A redis-server of the benchmark's own (no persistence): Celery's broker."""

    def __init__(self, logs: Path) -> None:
        binary = shutil.which("redis-server")
        require_service(binary is not None, "redis-server", "apt-get install redis-server")
        assert binary is not None
        self.port = free_port()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.child = Child("redis", [*args, "--appendonly", "no"], dict(os.environ), logs)
        wait_for_port(self.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "flushall"], check=True, capture_output=True
        )

    def stop(self) -> None:
        self.child.stop()


class CpuMeter:
    """CPU seconds (user + system) of named processes over a run, and of every PostgreSQL
    process (other users of the server included: a rough figure on a shared machine)."""

    def __init__(self) -> None:
        self.pids: dict[str, list[int]] = {}
        self.before: dict[int, float] = {}
        self.result: dict[str, float] = {}

    def add(self, name: str, *pids: int) -> None:
        self.pids.setdefault(name, []).extend(pids)

    @staticmethod
    def _postgres() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system + times.children_user + times.children_system)

    def start(self) -> None:
        pids = [pid for group in self.pids.values() for pid in group] + [os.getpid()]
        self.before = {pid: self._cpu(psutil.Process(pid)) for pid in pids}
        self.before.update({p.pid: self._cpu(p) for p in self._postgres()})

    def stop(self) -> None:
        def spent(pid: int) -> float:
            try:
                return self._cpu(psutil.Process(pid)) - self.before.get(pid, 0.0)
            except psutil.Error:
                return 0.0

        self.result = {name: sum(spent(pid) for pid in pids) for name, pids in self.pids.items()}
        self.result["pytest"] = spent(os.getpid())
        self.result["postgres"] = sum(spent(p.pid) for p in self._postgres())

    def line(self) -> str:
        return ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.result.items())


def _database_url() -> str:
    db = connection.settings_dict
    assert connection.vendor == "postgresql", "the rollout benchmark needs DATABASE_URL=postgres"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return (
        f"postgres://{db['USER'] or ''}{password}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}"
    )


class ControlPlane:
    """``manage.py bridge`` and the Celery worker (with beat) against one broker."""

    def __init__(self, broker: MosquittoBroker, redis: Redis, keys: Path, root: Path) -> None:
        root.mkdir(parents=True)
        env = {
            # Rollout and bridge tuning from the caller's environment, to compare settings.
            **{
                k: v
                for k, v in os.environ.items()
                if k.startswith(("FLEET_ROLLOUT_", "FLEET_BRIDGE_"))
            },
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "FLEET_DATA_DIR": str(root),
            "FLEET_KEYS_DIR": str(keys),
            "DATABASE_URL": _database_url(),
            "CELERY_BROKER_URL": redis.url,
            "FLEET_ROLLOUT_TICK_SECONDS": str(TICK_SECONDS),
            "FLEET_LOG_LEVEL": "INFO",
            # As deployed: without DEBUG, whose cursor wrapper logs and keeps every query.
            "DJANGO_DEBUG": "false",
        }
        url = f"mqtt://127.0.0.1:{broker.port}"
        # Replicas share the inbound messages ($share/bridge); one of them publishes.
        self.bridges = [
            Child(
                f"bridge-{n}",
                [sys.executable, "manage.py", "bridge", "--url", url]
                + ["--client-id", f"bench-bridge-{n}"],
                env,
                root,
            )
            for n in range(BRIDGES)
        ]
        self.bridge = self.bridges[0]
        self.worker = Child(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "fleet",
                "worker",
                "--pool",
                "solo",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--beat",
                "--schedule",
                str(root / "beat-schedule"),
                "--loglevel",
                "INFO",
            ],
            env,
            root,
        )
        for bridge in self.bridges:
            bridge.wait_for("bridge connected to")
        self.worker.wait_for(" ready.")
        self.profilers = [self._profile(c) for c in (self.bridge, self.worker)] if PYSPY else []

    def _profile(self, child: Child) -> subprocess.Popen[bytes]:
        """py-spy sampling ``child`` (BENCH_ROLLOUT_PYSPY=path of py-spy): collapsed stacks."""
        out = child.log.with_suffix(".pyspy.txt")
        return subprocess.Popen(
            [PYSPY, "record", "-p", str(child.process.pid), "-o", str(out), "--format", "raw"]
            + ["--rate", "50", "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        for profiler in self.profilers:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        for bridge in self.bridges:
            bridge.stop()
        self.worker.stop()


@contextmanager
def celery_to(redis: Redis) -> Iterator[None]:
    """Queue this process's tasks to ``redis`` instead of running them eagerly."""
    from fleet.celery import app

    saved = (app.conf.broker_url, app.conf.task_always_eager)
    app.conf.broker_url, app.conf.task_always_eager = redis.url, False
    try:
        yield
    finally:
        app.conf.broker_url, app.conf.task_always_eager = saved


# --- brokers and simulated devices -----------------------------------------------------------


def _pid(broker: MosquittoBroker) -> int:
    assert broker.process is not None
    return broker.process.pid


class Sim:
    """One rollout_simulator.py process (``devices`` or ``listen`` mode)."""

    def __init__(self, mode: str, port: int, device_ids: list[str], root: Path, name: str) -> None:
        ids = root / f"{name}.ids"
        ids.write_text("\n".join(device_ids))
        pubkey = root / "director.pub"
        if not pubkey.exists():
            pubkey.write_bytes(director_public_pem())
        args = [str(SIMULATOR), mode, "--port", str(port), "--devices", str(ids)]
        args += ["--name", f"{name}-{uuid.uuid4().hex[:6]}", "--pubkey", str(pubkey)]
        args += ["--timeout", str(RUN_TIMEOUT)]
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            pytest.fail(f"{name}: {line!r} {self.process.stderr.read()[-2000:]}")

    def wait_done(self) -> float:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("done "):
            pytest.fail(f"{self.name}: {line!r}: {self.finish()}")
        return float(line.split()[1])

    def finish(self) -> dict[str, Any]:
        out, err = self.process.communicate(timeout=120)
        assert self.process.returncode == 0, err[-3000:]
        lines = out.strip().splitlines()
        return dict(json.loads(lines[-1]))


class Fleet:
    """The simulated devices of one run: SIMULATORS processes, each with a shard."""

    def __init__(self, port: int, device_ids: list[str], root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        shards = [device_ids[i::SIMULATORS] for i in range(SIMULATORS)]
        self.sims = [Sim("devices", port, s, root, f"sim{i}") for i, s in enumerate(shards)]

    def finish(self) -> dict[str, Any]:
        """Every device's envelopes: [seq, rollout id, received, replied], and the counters."""
        envelopes: dict[str, list[list[Any]]] = {}
        stats: dict[str, int] = {}
        for sim in self.sims:
            summary = sim.finish()
            envelopes.update(summary.pop("envelopes"))
            for key, value in summary.items():
                stats[key] = stats.get(key, 0) + value
        return {"envelopes": envelopes, **stats}


def _check_fleet(summary: dict[str, Any], n: int, rollout_id: str, seqs: dict[str, int]) -> None:
    """Each device received exactly one envelope, of this rollout, signed, and applied it."""
    envelopes = summary["envelopes"]
    assert summary["bad_signature"] == 0, summary["bad_signature"]
    assert summary["not_qos1"] == 0, summary["not_qos1"]
    assert summary["stale"] == 0, f"{summary['stale']} envelopes repeated or stale"
    assert len(envelopes) == n
    counts = {d: len(e) for d, e in envelopes.items()}
    twice = [d for d, c in counts.items() if c != 1]
    assert not twice, f"{len(twice)} devices got != 1 envelope, e.g. {twice[:3]}"
    wrong = [d for d, e in envelopes.items() if (e[0][0], e[0][1]) != (seqs[d], rollout_id)]
    assert not wrong, f"{len(wrong)} devices got another seq or rollout, e.g. {wrong[:3]}"


# --- the fleet in the database ----------------------------------------------------------------


def _operator() -> User:
    user = User.objects.create(username=f"bench-{uuid.uuid4().hex[:6]}")
    for codename in ("add_rollout", "start_rollout", "view_rollout", "control_rollout"):
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="ota", codename=codename)
        )
    return User.objects.get(pk=user.pk)


def _fleet(prefix: str, n: int, artifact: Artifact) -> list[Device]:
    """N devices in group ``prefix`` running ``artifact``: desired published and reported."""
    Device.objects.bulk_create(
        Device(device_id=f"{prefix}-{i:05d}", hardware=HARDWARE) for i in range(n)
    )
    devices = list(Device.objects.filter(device_id__startswith=f"{prefix}-").order_by("pk"))
    group = Group.objects.create(name=prefix)
    Device.groups.through.objects.bulk_create(
        Device.groups.through(device_id=d.pk, group_id=group.pk) for d in devices
    )
    devices_desired_set(devices=devices, assignments_for=lambda d: [ModelAssignment(artifact)])
    DesiredState.objects.filter(device__in=devices).update(published_seq=F("seq"))
    DesiredOutbox.objects.filter(desired__device__in=devices).delete()
    _report(devices, artifact)
    return devices


def _report(devices: list[Device], artifact: Artifact) -> None:
    seqs = dict(DesiredState.objects.filter(device__in=devices).values_list("device_id", "seq"))
    for device in devices:
        device.reported = ReportedState(
            agent_version="bench-sim/1",
            hardware=HARDWARE,
            models=(
                ModelState(
                    name="kws",
                    version=artifact.version,
                    release_counter=artifact.release_counter,
                    slot=Slot.A,
                    status=Phase.COMMITTED,
                ),
            ),
            last_seq=seqs[device.pk],
        ).to_dict()
        device.reported_seq = seqs[device.pk]
    Device.objects.bulk_update(devices, ["reported", "reported_seq"], batch_size=1000)


def _seqs(devices: list[Device]) -> dict[str, int]:
    return dict(
        DesiredState.objects.filter(device__in=devices).values_list("device__device_id", "seq")
    )


# --- one run of each kind ----------------------------------------------------------------------


@dataclass
class Run:
    acked: float  # start -> every device's committed event stored
    completed: float  # start -> the rollout completed
    last_notified: float = 0.0  # start -> the last device notified (by notified_at)
    stage_gaps: list[float] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    cpu: str = ""


def _wait(predicate: Any, what: str, started: float, poll: float = 0.05) -> float:
    while not predicate():
        if time.monotonic() - started > RUN_TIMEOUT:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - started


def _notified_at(rows: QuerySet[RolloutDevice]) -> list[datetime]:
    """When each device was notified: every one was, once its rollout has run."""
    times = list(rows.values_list("notified_at", flat=True))
    assert None not in times, "a device was never notified"
    return cast(list[datetime], times)


def rollout_run(
    *,
    root: Path,
    redis: Redis,
    keys: Path,
    devices: list[Device],
    group: str,
    version: str,
    stages: list[dict[str, float]],
    policy: dict[str, Any],
) -> tuple[Run, Rollout]:
    """The real system: start a rollout, wait until all acknowledged and completed."""
    n = len(devices)
    ids = [d.device_id for d in devices]
    # The fresh broker stands for one that kept what it was sent: without this the bridge
    # finds no sentinel and publishes the earlier runs' envelopes again
    # (fleet/bridge/sentinel.py).
    DesiredState.objects.update(published_at=None)
    broker = bench_broker(root / "mqtt")
    fleet = Fleet(broker.port, ids, root / "sims")
    plane = ControlPlane(broker, redis, keys, root / "plane")
    by = _operator()
    cpu = CpuMeter()
    cpu.add("bridge", *(bridge.process.pid for bridge in plane.bridges))
    cpu.add("worker", plane.worker.process.pid)
    cpu.add("simulators", *(sim.process.pid for sim in fleet.sims))
    cpu.add("mosquitto", _pid(broker))
    try:
        with celery_to(redis):
            cpu.start()
            started, started_at = time.monotonic(), time.time()
            rollout = rollouts.rollout_create(
                model_name="kws",
                strategy="phased",
                version=version,
                stages=stages,
                selection={"groups": [group]},
                policy=policy,
                by=by,
            )
            rollout = rollouts.rollout_start(rollout=rollout, by=by)
            committed = DeviceEvent.objects.filter(
                rollout_id=rollout.public_id, phase=Phase.COMMITTED
            )
            # Polled slowly (a count over the events costs the database, which the system
            # under test shares); the times come from the rows: when the bridge stored the
            # last committed event, when the engine completed the rollout.
            _wait(lambda: committed.count() >= n, "all committed", started, poll=0.5)
            done = Rollout.objects.filter(pk=rollout.pk, status=RolloutStatus.COMPLETED)
            _wait(done.exists, "the rollout completed", started, poll=0.5)
            cpu.stop()
            last_stored = max(committed.values_list("received_at", flat=True))
            acked = last_stored.timestamp() - started_at
            finished = Rollout.objects.get(pk=rollout.pk).finished_at
            assert finished is not None
            completed = finished.timestamp() - started_at
    except BaseException:
        print(f"\nbridge:\n{plane.bridge.tail()}\nworker:\n{plane.worker.tail()}")
        raise
    finally:
        plane.stop()
        summary = fleet.finish()
        broker.stop()
    _check_fleet(summary, n, rollout.public_id, _seqs(devices))
    rows = RolloutDevice.objects.filter(rollout=rollout)
    assert rows.count() == n
    states = sorted(rows.values_list("state", flat=True).distinct())
    assert rows.filter(state="succeeded").count() == n, states
    gaps = _stage_order(rollout, stages, summary["envelopes"])
    last = max(_notified_at(rows))
    first_at = rollout.started_at
    assert first_at is not None
    run = Run(acked=acked, completed=completed, stage_gaps=gaps, cpu=cpu.line())
    run.timeline = _timeline(rollout, stages, summary["envelopes"])
    run.last_notified = (last - first_at).total_seconds()
    return run, Rollout.objects.get(pk=rollout.pk)


def _timeline(
    rollout: Rollout, stages: list[dict[str, float]], envelopes: dict[str, list[list[Any]]]
) -> list[str]:
    """Per stage, seconds from the start: opened, first and last notified, first and last
    envelope received and last reply sent by the simulators, last committed event stored
    (the database's clock, as the engine sees it; the simulators' monotonic times moved
    onto it)."""
    start = rollout.started_at
    assert start is not None
    to_wall = time.time() - time.monotonic() - start.timestamp()
    opened = [start] + [
        at
        for at, reason in rollout.audit_events.order_by("pk").values_list("at", "reason")
        if reason.startswith("stage ")
    ]
    lines, low = [], -1.0
    for k, high in enumerate(rollout.stage_bounds):
        rows = RolloutDevice.objects.filter(rollout=rollout, bucket__gt=low, bucket__lte=high)
        notified = _notified_at(rows)
        first, last = min(notified), max(notified)
        acked = (
            DeviceEvent.objects.filter(
                rollout_id=rollout.public_id,
                phase=Phase.COMMITTED,
                device_id__in=rows.values("device_id"),
            )
            .order_by("-received_at")
            .values_list("received_at", flat=True)
            .first()
        )
        assert first
        assert last
        assert acked
        logs = [envelopes[d][0] for d in rows.values_list("device__device_id", flat=True)]
        received = [log[2] + to_wall for log in logs]
        replied = max(log[3] for log in logs) + to_wall
        lines.append(
            f"    stage {k + 1} ({rows.count()} devices): opened "
            f"{(opened[k] - start).total_seconds():6.2f}, notified "
            f"{(first - start).total_seconds():6.2f}-{(last - start).total_seconds():6.2f}, "
            f"received {min(received):6.2f}-{max(received):6.2f}, last reply {replied:6.2f}, "
            f"last committed stored {(acked - start).total_seconds():6.2f}"
        )
        low = high
    return lines


def _notify_histogram(rollout: Rollout, step: float = 5.0) -> list[str]:
    """Devices notified per ``step`` seconds from the start (the pacing's shape)."""
    start = rollout.started_at
    assert start is not None
    counts: dict[int, int] = {}
    for at in _notified_at(RolloutDevice.objects.filter(rollout=rollout)):
        slot = int((at - start).total_seconds() // step)
        counts[slot] = counts.get(slot, 0) + 1
    return [
        f"    {slot * step:5.0f}-{(slot + 1) * step:3.0f} s: {counts.get(slot, 0)}"
        for slot in range(min(counts), max(counts) + 1)
    ]


def _stage_order(
    rollout: Rollout, stages: list[dict[str, float]], envelopes: dict[str, list[list[Any]]]
) -> list[float]:
    """No device of a stage received its envelope before every device of the stage before
    had replied; returns those gaps (first receipt of stage k+1 - last reply of stage k)."""
    buckets = dict(
        RolloutDevice.objects.filter(rollout=rollout).values_list("device__device_id", "bucket")
    )
    edges = rollout.stage_bounds
    by_stage: list[list[str]] = [[] for _ in stages]
    for device_id, bucket in buckets.items():
        by_stage[next(i for i, edge in enumerate(edges) if bucket <= edge)].append(device_id)
    gaps = []
    for before, after in zip(by_stage, by_stage[1:], strict=False):
        if not before or not after:
            continue
        last_reply = max(envelopes[d][0][3] for d in before)
        first_receipt = min(envelopes[d][0][2] for d in after)
        assert first_receipt > last_reply, "a stage opened before the one before it finished"
        gaps.append(first_receipt - last_reply)
    audit = list(rollout.audit_events.order_by("pk").values_list("reason", flat=True))
    opened = [r for r in audit if r.startswith("stage ")]
    assert opened == [
        f"stage {i + 1} ({s['percent']:g} %) opened" for i, s in enumerate(stages[1:], 1)
    ], audit
    return gaps


def reference_run(*, root: Path, devices: list[Device]) -> tuple[float, str]:
    """Bare paho publishes the rollout's envelopes; until the listener has every reply."""
    ids = [d.device_id for d in devices]
    payloads = envelopes(devices)
    broker = bench_broker(root / "mqtt")
    fleet = Fleet(broker.port, ids, root / "sims")
    listener = Sim("listen", broker.port, ids, root / "sims", "listener")
    acked: list[int] = []
    connected, all_acked = threading.Event(), threading.Event()

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, *args: Any) -> None:
        acked.append(mid)
        if len(acked) == len(payloads):
            all_acked.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"ref-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(INFLIGHT)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *args: connected.set()
    cpu = CpuMeter()
    cpu.add("simulators", *(sim.process.pid for sim in fleet.sims))
    cpu.add("listener", listener.process.pid)
    cpu.add("mosquitto", _pid(broker))
    try:
        cpu.start()
        started = time.monotonic()
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        assert connected.wait(10), "reference client did not connect"
        for topic, payload in payloads.items():
            info = client.publish(topic, payload, qos=1, retain=True)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        assert all_acked.wait(RUN_TIMEOUT), f"{len(acked)} PUBACKs of {len(payloads)}"
        elapsed = listener.wait_done() - started
        cpu.stop()
    finally:
        client.disconnect()
        client.loop_stop()
        summary = fleet.finish()
        heard = listener.finish()
        broker.stop()
    assert heard["committed"] == heard["reported"] == len(ids), heard
    rollout_id = next(iter(summary["envelopes"].values()))[0][1]
    _check_fleet(summary, len(ids), rollout_id, _seqs(devices))
    return elapsed, cpu.line()


# --- the benchmark ------------------------------------------------------------------------------


@dataclass
class Figures:
    n: int
    reference: list[float] = field(default_factory=list)
    reference_cpu: list[str] = field(default_factory=list)
    phased: list[Run] = field(default_factory=list)


def _phased_lines(f: Figures) -> list[str]:
    ref = statistics.median(f.reference)
    acked = statistics.median(r.acked for r in f.phased)
    completed = statistics.median(r.completed for r in f.phased)

    def runs(values: list[float]) -> str:
        return " ".join(f"{v:.2f}" for v in values)

    per_round = [r.acked / s for r, s in zip(f.phased, f.reference, strict=True)]
    gaps = [statistics.median(r.stage_gaps) for r in f.phased if r.stage_gaps]
    return [
        f"N = {f.n:,} devices, {len(f.reference)} interleaved rounds, medians [runs]:",
        f"  bare paho + simulated devices (reference): {ref:6.2f} s  [{runs(f.reference)}]",
        f"  rollout, start -> all acknowledged:        {acked:6.2f} s  "
        f"[{runs([r.acked for r in f.phased])}]",
        f"  rollout, start -> completed:               {completed:6.2f} s  "
        f"[{runs([r.completed for r in f.phased])}]",
        f"  stage hand-over (last reply of a stage -> first envelope of the next), "
        f"median per run: [{runs(gaps)}] s",
        f"  rollout/reference time ratio (all acknowledged) = {acked / ref:.2f} "
        f"(goal <= {PHASED_GOAL}); per round {runs(per_round)}",
        *(
            line
            for r, ref_cpu in zip(f.phased if TRACE else [], f.reference_cpu, strict=False)
            for line in [
                f"  CPU seconds, rollout: {r.cpu}",
                f"  CPU seconds, reference: {ref_cpu}",
                "  timeline:",
                *r.timeline,
            ]
        ),
    ]


@pytest.fixture
def bench_env(settings: Any, tmp_path: Path) -> Iterator[tuple[Redis, Path]]:
    keys = tmp_path / "keys"
    keys.mkdir()
    settings.FLEET_KEYS_DIR = keys
    director_private_key()
    logs = tmp_path / "redis"
    logs.mkdir()
    redis = Redis(logs)
    try:
        yield redis, keys
    finally:
        from fleet.celery import app

        # Its connections are to this Redis: close them and forget the pools (the producer
        # pool too, or the next test's first task finds it closed and is lost).
        app.pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None
        redis.stop()


@pytest.mark.timeout(3600)
def test_phased_rollout_vs_bare_paho(
    bench_env: tuple[Redis, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    redis, keys = bench_env
    artifacts = kws_artifacts(username="bench-ci", count=RUNS + 2)
    report = []
    for n in SIZES:
        # given N devices running version 1.0.0
        devices = _fleet(f"n{n}", n, artifacts[0])
        figures = Figures(n)
        for run in range(RUNS):
            # when a 4-stage rollout takes them to the next version, then the reference
            # sends the same envelopes
            root = tmp_path / f"n{n}-{run}"
            redis.flush()
            measured, _ = rollout_run(
                root=root / "rollout",
                redis=redis,
                keys=keys,
                devices=devices,
                group=f"n{n}",
                version=artifacts[run + 1].version,
                stages=STAGES,
                policy=UNPACED,
            )
            figures.phased.append(measured)
            elapsed, cpu = reference_run(root=root / "reference", devices=devices)
            figures.reference.append(elapsed)
            figures.reference_cpu.append(cpu)
            # then (checked in the runs) every device committed, once, stage after stage
        report.append(figures)
    with capsys.disabled():
        print(
            f"\nrollout benchmark [{connection.vendor}], {os.cpu_count()} CPUs, stages "
            f"{' -> '.join(str(s['percent']) for s in STAGES)} %, bake 0, "
            f"{SIMULATORS} simulator processes, beat every {TICK_SECONDS} s"
        )
        for figures in report:
            print("\n".join(_phased_lines(figures)))


@pytest.mark.timeout(1800)
def test_paced_rollout_vs_n_over_rate(
    bench_env: tuple[Redis, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    redis, keys = bench_env
    artifacts = kws_artifacts(username="bench-ci", count=2)
    devices = _fleet("paced", PACED_N, artifacts[0])
    # A burst of one: the stage is spread over N / R (by default a minute's worth may go
    # at once, which at R >= N is everything).
    policy = {"rate_per_minute": PACED_RATE, "rate_burst": 1}
    run, rollout = rollout_run(
        root=tmp_path / "paced",
        redis=redis,
        keys=keys,
        devices=devices,
        group="paced",
        version=artifacts[1].version,
        stages=[{"percent": 100}],
        policy=policy,
    )
    # then never more than R in any 60 s window
    times = sorted(_notified_at(RolloutDevice.objects.filter(rollout=rollout)))
    window = timedelta(seconds=60)
    busiest, j = 0, 0
    for i, at in enumerate(times):
        while at - times[j] >= window:
            j += 1
        busiest = max(busiest, i - j + 1)
    assert busiest <= PACED_RATE, f"{busiest} notified within 60 s at {PACED_RATE}/min"
    ideal = PACED_N / PACED_RATE * 60
    with capsys.disabled():
        print(
            f"\npaced rollout: N = {PACED_N}, rate {PACED_RATE:g}/min, N/R = {ideal:.1f} s, "
            f"beat every {TICK_SECONDS} s; busiest 60 s window {busiest}"
        )
        print(
            f"  start -> last notified:     {run.last_notified:6.2f} s, "
            f"ratio {run.last_notified / ideal:.2f}"
        )
        print(
            f"  start -> all acknowledged:  {run.acked:6.2f} s, "
            f"ratio {run.acked / ideal:.2f} (goal <= {PACED_GOAL})"
        )
        if TRACE:
            print(f"  CPU seconds: {run.cpu}")
            print("\n".join(_notify_histogram(rollout)))
