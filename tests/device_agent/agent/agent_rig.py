"""One shared rig per test module for the fault and adversarial suites.

Building it (`open_rig`) costs a few seconds, once per module:

1. **The real TUF repository, built once.** ota's own services (repository_initialize,
   model_register, artifact_publish with CI-signed metadata, release_key_revoke, ...)
   run in-process inside one transaction that is rolled back at the end, so the test
   database is left as it was. Each repository state a test needs (`base`, `v1-only`,
   `revoked`, `stranger`, ...) is exported as the static files /tuf/ serves, and
   agent_mirror serves them per case. Serving a snapshot instead of the live server
   lets a test replay older metadata or misserve bytes, and costs no database flush.
2. **A Mosquitto broker** for the module and one MQTT watcher on every device's topics.
3. **A template agent directory** with model v1 committed through a real agent run.

Each case then copies the template (`Rig.case`), gives the copy its own device id and
mirror, and drives `fleet-agent run` as a real process (`CaseAgent`), with the test
hooks of device_agent/testhooks.py in its environment when asked.
"""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from agent_harness import desired_envelope
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.config import AgentConfig, Layout
from device_agent.protocol.envelope import (
    generate_director_key,
    sign_envelope,
    write_public_key,
)
from device_agent.protocol.messages import ModelTarget, parse_event, parse_state
from device_agent.protocol.topics import Channel, topic_for

REPO = Path(__file__).resolve().parents[3]
HARDWARE = "linux-x86_64-fp32"
ESP32 = "esp32s3-int8"
TERMINAL = ("committed", "failed", "rolled_back")


def tflite(seed: bytes, size: int) -> bytes:
    """Bytes that pass the TFLite format check (TFL3 at offset 4)."""
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    body = block * (size // len(block) + 1)
    return (b"\x1c\x00\x00\x00TFL3" + body)[:size]


@dataclass(frozen=True)
class Release:
    """One published (or forged) model variant."""

    version: str
    counter: int
    data: bytes
    hardware: str = HARDWARE
    floor: int = 0
    name: str = "kws"
    filename: str = "model.tflite"

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def length(self) -> int:
        return len(self.data)

    @property
    def path(self) -> str:
        return f"models/{self.name}/{self.version}/{self.hardware}/{self.filename}"

    def url(self, mirror_url: str) -> str:
        directory, _, filename = self.path.rpartition("/")
        return f"{mirror_url}/tuf/targets/{directory}/{self.sha256}.{filename}"

    def custom(self, **overrides: Any) -> dict[str, Any]:
        return {
            "version": self.version,
            "hardware": self.hardware,
            "format": "tflite",
            "release_counter": self.counter,
            "floor": self.floor,
            **overrides,
        }

    def target(self, mirror_url: str, **overrides: Any) -> ModelTarget:
        fields: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "version": self.version,
            "release_counter": self.counter,
            "hardware": self.hardware,
            "sha256": self.sha256,
            "length": self.length,
            "url": self.url(mirror_url),
            "rollout_id": "r-1",
            "arm": "A",
        }
        fields.update(overrides)
        return ModelTarget(**fields)


# Published in this order (release counters only go up): v1 is what the template runs.
V1 = Release("1.0.0", 1, tflite(b"v1", 48 * 1024))
V2 = Release("2.0.0", 2, tflite(b"v2", 4 * 1024 * 1024))
V2_ESP32 = Release("2.0.0", 2, tflite(b"v2-esp32", 32 * 1024), hardware=ESP32)
V3_FIX = Release("3.0.0", 3, tflite(b"v3", 32 * 1024), floor=3)  # a security fix
V4_BROKEN = Release("4.0.0", 4, b"\x00" * (256 * 1024))  # no TFL3: fails its trial
# Never accepted by the server's publish checks; forged straight into the metadata.
V5_STRANGER = Release("5.0.0", 5, tflite(b"v5", 32 * 1024))
V6_HW_LIE = Release("6.0.0", 6, tflite(b"v6", 32 * 1024))  # custom hardware says esp32
ESCAPE_PATH = "models/kws/../../etc/passwd"

PUBLISHED = (V1, V2, V2_ESP32, V3_FIX, V4_BROKEN)


# --- the repository -------------------------------------------------------------------


def _export(dest: Path) -> None:
    """Write the repository as /tuf/ serves it: <version>.<role>.json + timestamp.json."""
    from ota.models import TufMetadata

    dest.mkdir(parents=True)
    latest: dict[str, tuple[int, bytes]] = {}
    for row in TufMetadata.objects.all():
        data = bytes(row.data)
        (dest / f"{row.version}.{row.role}.json").write_bytes(data)
        if row.version > latest.get(row.role, (0, b""))[0]:
            latest[row.role] = (row.version, data)
    (dest / "timestamp.json").write_bytes(latest["timestamp"][1])


def _store_delegated(md: Any) -> None:
    """Store kws metadata as a compromised server would: no signature checks."""
    from ota.models import Model
    from ota.repository import delegated_metadata_store, repository_lock

    repository_lock()
    delegated_metadata_store(Model.objects.get(name="kws"), md)


def _next_kws(add: dict[str, tuple[Release, dict[str, Any]]]) -> Any:
    from tuf.api.metadata import TargetFile, Targets

    from ota.fleetctl.targets import next_metadata
    from ota.repository import metadata_latest

    md = next_metadata(metadata_latest("kws", Targets), 30)
    for path, (release, custom) in add.items():
        md.signed.targets[path] = TargetFile(
            release.length,
            {"sha256": release.sha256},
            path,
            unrecognized_fields={"custom": custom},
        )
    return md


def _publish(release: Release, signer: Any, user: Any, workdir: Path) -> None:
    from django.core.files import File
    from tuf.api.serialization.json import JSONSerializer

    from ota.fleetctl.targets import sign
    from ota.publishing import Upload, artifact_publish

    md = _next_kws({release.path: (release, release.custom())})
    sign(md, signer)
    source = workdir / f"{release.version}-{release.hardware}"
    source.write_bytes(release.data)
    with source.open("rb") as f:
        artifact_publish(
            model_name="kws",
            metadata=md.to_bytes(JSONSerializer()),
            upload=Upload(
                file=File(f, name=release.filename), sha256=release.sha256, length=release.length
            ),
            by=user,
        )


def _write_targets(targets: Path, releases: tuple[Release, ...]) -> None:
    for release in releases:
        directory, _, filename = release.path.rpartition("/")
        dest = targets / directory / f"{release.sha256}.{filename}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(release.data)


def build_repository(
    root: Path, django_db_blocker: Any, extra: tuple[Release, ...] = ()
) -> dict[str, Path]:
    """Export every repository state the suites use; the database is left untouched.

    `extra` releases are published after the standard ones, into `base` and what
    branches from it."""
    from django.conf import settings
    from django.db import transaction
    from django.test import override_settings
    from release_keys import make_release_key

    states: dict[str, Path] = {}
    storage = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root / "artifacts")},
        },
    }
    workdir = root / "work"
    workdir.mkdir(parents=True)
    with (
        django_db_blocker.unblock(),
        override_settings(FLEET_KEYS_DIR=root / "keys", STORAGES=storage, FLEET_STORAGE="local"),
        transaction.atomic(),
    ):
        _build_states(root, workdir, states, make_release_key, extra)
        transaction.set_rollback(True)
    _write_targets(root / "targets", (*PUBLISHED, *extra, V5_STRANGER, V6_HW_LIE))
    return states


def _build_states(
    root: Path,
    workdir: Path,
    states: dict[str, Path],
    make_key: Any,
    extra: tuple[Release, ...],
) -> None:
    from django.db import transaction
    from tuf.api.metadata import MetaFile, Snapshot, Timestamp

    from fleet.services import ci_user_get_or_create
    from ota.fleetctl.targets import sign
    from ota.repository import (
        metadata_latest,
        metadata_store,
        model_register,
        release_key_revoke,
        repository_initialize,
        signer_for,
    )

    def export(name: str) -> None:
        states[name] = root / "states" / name
        _export(states[name])

    @contextmanager
    def branch(name: str) -> Iterator[None]:
        with transaction.atomic():  # a savepoint, rolled back after the export
            yield
            export(name)
            transaction.set_rollback(True)

    def timestamp_forge(**change: Any) -> None:
        # What an attacker holding only the online timestamp key could sign.
        md = metadata_latest(Timestamp.type, Timestamp)
        assert md is not None
        md.signed.version += 1
        for key, value in change.items():
            setattr(md.signed, key, value)
        metadata_store(Timestamp.type, md, [signer_for(Timestamp.type)])

    release_key = make_key(root / "ci-key")
    repository_initialize(generate_missing_keys=True)
    model_register(
        name="kws",
        keys=[release_key.signer.public_key],
        threshold=1,
        targets_signer=signer_for("targets"),
    )
    user = ci_user_get_or_create(username="ci")
    _publish(V1, release_key.signer, user, workdir)
    export("v1-only")
    old_snapshot = metadata_latest(Snapshot.type, Snapshot)
    assert old_snapshot is not None
    for release in (*PUBLISHED[1:], *extra):
        _publish(release, release_key.signer, user, workdir)
    export("base")

    with branch("stranger"):
        # kws metadata signed by a key no delegation trusts
        md = _next_kws({V5_STRANGER.path: (V5_STRANGER, V5_STRANGER.custom())})
        sign(md, make_key(root / "stranger-key").signer)
        _store_delegated(md)
    with branch("revoked"):
        release_key_revoke(
            keyid=release_key.signer.public_key.keyid,
            reason="leaked",
            targets_signer=signer_for("targets"),
        )
    with branch("hw-lie"):
        # CI's own key signs a linux path whose custom fields say esp32
        md = _next_kws({V6_HW_LIE.path: (V6_HW_LIE, V6_HW_LIE.custom(hardware=ESP32))})
        sign(md, release_key.signer)
        _store_delegated(md)
    with branch("escape"):
        # CI's own key signs a target whose path climbs out of models/kws/
        md = _next_kws({ESCAPE_PATH: (V6_HW_LIE, V6_HW_LIE.custom())})
        sign(md, release_key.signer)
        _store_delegated(md)
    with branch("expired-timestamp"):
        timestamp_forge(expires=datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))
    with branch("replayed-snapshot"):
        timestamp_forge(snapshot_meta=MetaFile(version=old_snapshot.signed.version))


# --- MQTT -----------------------------------------------------------------------------


class FleetWatcher:
    """One paho client on every device's events/state/status topics."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: dict[str, list[Any]] = {}
        self.states: dict[str, list[Any]] = {}
        self.statuses: dict[str, list[str]] = {}
        self.changed = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rig-{os.getpid()}")

    def start(self) -> None:
        subscribed = threading.Event()
        root = "fleet/v1/devices/+/"

        def on_connect(c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe([(root + "events", 1), (root + "state", 1), (root + "status", 1)])

        def on_subscribe(c: paho.Client, u: Any, mid: Any, rcs: Any, p: Any) -> None:
            subscribed.set()

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            parts = msg.topic.split("/")
            device, channel = parts[3], parts[4]
            if not msg.payload:
                return
            with self.changed:
                if channel == "events":
                    self.events.setdefault(device, []).append(parse_event(bytes(msg.payload)))
                elif channel == "state":
                    self.states.setdefault(device, []).append(parse_state(bytes(msg.payload)))
                else:
                    status = json.loads(msg.payload)["status"]
                    self.statuses.setdefault(device, []).append(status)
                self.changed.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert subscribed.wait(10), "the watcher could not subscribe"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def send_desired(self, device_id: str, envelope: bytes) -> None:
        topic = topic_for(device_id, Channel.DESIRED)
        self.client.publish(topic, envelope, qos=1, retain=True).wait_for_publish(10)

    def clear_desired(self, device_id: str) -> None:
        topic = topic_for(device_id, Channel.DESIRED)
        self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
                self.changed.wait(min(remaining, 0.2))


class SlowLink:
    """A TCP proxy to the broker that refuses connections for its first `delay_s`, like a
    network that comes up after the agent: what the agent publishes meanwhile waits in
    paho's memory, not in a socket."""

    def __init__(self, port: int, delay_s: float) -> None:
        self.target = port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        self.port = self.listener.getsockname()[1]
        self.timer = threading.Timer(delay_s, self._open)
        self.timer.start()

    def _open(self) -> None:
        self.listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.target)) as upstream:
            pump = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
            pump.start()
            self._pump(client, upstream)
            pump.join(5)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.timer.cancel()
        self.listener.close()


# --- agents ---------------------------------------------------------------------------


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_AGENT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@dataclass
class CaseAgent:
    """One agent directory and its `fleet-agent run` process(es)."""

    rig: "Rig"
    directory: Path
    device_id: str
    mirror: Any
    process: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)

    @property
    def layout(self) -> Layout:
        return Layout(self.directory)

    @property
    def log_path(self) -> Path:
        return self.directory.parent / f"{self.directory.name}.log"

    def start(self, env: dict[str, str] | None = None) -> None:
        self.starts.append(time.monotonic())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "device_agent.cli",
                    "-v",
                    "run",
                    "--dir",
                    str(self.directory),
                ],
                cwd=REPO,
                env=agent_env(env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the agent did not exit within {timeout}s\n{self.log()}"
            ) from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return "(no log)"

    def send(self, envelope: bytes) -> None:
        self.rig.watcher.send_desired(self.device_id, envelope)

    def envelope(self, seq: int, targets: list[ModelTarget], **kwargs: Any) -> bytes:
        return self.rig.envelope(self.device_id, seq, targets, **kwargs)

    def target(self, release: Release, **overrides: Any) -> ModelTarget:
        return release.target(self.mirror.url, **overrides)

    def events(self) -> list[Any]:
        return list(self.rig.watcher.events.get(self.device_id, []))

    def states(self) -> list[Any]:
        return list(self.rig.watcher.states.get(self.device_id, []))

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        try:
            return self.rig.watcher.wait_for(predicate, timeout, what)
        except TimeoutError as exc:
            events = [(e.seq, e.model, e.phase, e.code, e.detail) for e in self.events()]
            raise AssertionError(
                f"{exc}\nevents: {events}\n--- agent log ---\n{self.log()}"
            ) from None

    def wait_event(
        self, seq: int, phases: tuple[str, ...], model: str | None = "kws", timeout: float = 30
    ) -> Any:
        def found() -> Any:
            for event in self.events():
                if event.seq == seq and event.model == model and event.phase in phases:
                    return event
            return None

        return self.wait_for(found, f"seq {seq} {model} {phases}", timeout)

    def wait_settled(self, seq: int, timeout: float = 30) -> None:
        """Until the agent is idle: no journal, and a state reporting `seq` arrived."""

        def settled() -> bool:
            return not self.layout.journal.exists() and any(
                s.last_seq == seq for s in self.states()
            )

        self.wait_for(settled, f"the agent to settle at seq {seq}", timeout)

    # -- what is on disk --

    def current_sha256(self, model: str = "kws", filename: str = "model.tflite") -> str | None:
        try:
            data = (self.layout.models / model / "current" / filename).read_bytes()
        except OSError:
            return None
        return hashlib.sha256(data).hexdigest()

    def current_slot(self, model: str = "kws") -> str | None:
        try:
            return os.readlink(self.layout.models / model / "current")
        except OSError:
            return None

    def store(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.layout.store.read_text())
        return data

    def journal_status(self) -> str | None:
        try:
            return str(json.loads(self.layout.journal.read_text())["state"]["status"])
        except FileNotFoundError:
            return None

    def assert_runs(self, release: Release, slot: str) -> None:
        """`current` serves exactly `release`, the store agrees, nothing is in flight."""
        assert self.current_slot() == f"slots/{slot}", self.log()
        assert self.current_sha256() == release.sha256
        installed = self.store()["models"]["kws"]["installed"]
        assert (installed["version"], installed["slot"], installed["sha256"]) == (
            release.version,
            slot,
            release.sha256,
        )
        assert not self.layout.journal.exists()
        assert list(self.layout.downloads.iterdir()) == []


@dataclass
class Rig:
    root: Path
    states: dict[str, Path]
    broker: Any
    watcher: FleetWatcher
    director: Any
    template: Path
    stack: ExitStack
    cases: int = 0

    @property
    def targets(self) -> Path:
        return self.root / "repo" / "targets"

    def envelope(
        self,
        device_id: str,
        seq: int,
        targets: list[ModelTarget],
        *,
        issued_at: datetime | None = None,
        expires_in: timedelta = timedelta(days=7),
    ) -> bytes:
        return desired_envelope(
            device_id, seq, targets, issued_at=issued_at, expires_in=expires_in, key=self.director
        )

    def raw_envelope(self, payload: dict[str, Any]) -> bytes:
        """Sign any JSON payload, valid or not, with the director key."""
        return sign_envelope(json.dumps(payload).encode(), self.director)

    @contextmanager
    def case(
        self, name: str, *, state: str = "base", template: bool = True, **config: Any
    ) -> Iterator[CaseAgent]:
        """A copy of the template agent with its own device id and mirror; on exit the
        agent is killed and the mirror stops."""
        from agent_mirror import Mirror, serving

        self.cases += 1
        raw = f"{name[:40]}-{self.cases}"
        device_id = "".join(c if c.isalnum() or c in "_-" else "-" for c in raw)
        directory = self.root / "cases" / device_id
        if template:
            # Not the template device's unconfirmed events: this is another device.
            shutil.copytree(
                self.template,
                directory,
                symlinks=True,
                ignore=shutil.ignore_patterns("events.json"),
            )
        with serving(Mirror(self.states[state], self.targets)) as mirror:
            settings = agent_settings(device_id, mirror.url, self.broker.port, **config)
            _write_agent_dir(directory, settings, self, fresh=not template)
            agent = CaseAgent(self, directory, device_id, mirror)
            try:
                yield agent
            finally:
                agent.kill()


def agent_settings(device_id: str, mirror_url: str, port: int, **config: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "device_id": device_id,
        "hardware": HARDWARE,
        "server_url": mirror_url,
        "tuf_url": f"{mirror_url}/tuf/",
        "broker_url": f"mqtt://127.0.0.1:{port}",
        "trial_deadline_s": 30.0,
        "download_stall_s": 2.0,
        "download_attempts": 2,
        "download_backoff_s": 0.05,
        "download_backoff_max_s": 0.2,
    }
    settings.update(config)
    return settings


def _write_agent_dir(directory: Path, settings: dict[str, Any], rig: Rig, *, fresh: bool) -> None:
    layout = Layout(directory)
    layout.make_dirs()
    if fresh:
        write_public_key(layout.director_key, rig.director.public_key())
        shutil.copyfile(rig.states["base"] / "1.root.json", layout.trust_root)
    AgentConfig(**settings).save(directory)


@contextmanager
def open_rig(root: Path, django_db_blocker: Any, extra: tuple[Release, ...] = ()) -> Iterator[Rig]:
    """Build the repository, start the broker and watcher, make the v1 template."""
    from mqtt_broker import MosquittoBroker

    with ExitStack() as stack:
        states = build_repository(root / "repo", django_db_blocker, extra)
        broker = MosquittoBroker(root / "mosquitto", persistence=False)
        stack.callback(broker.stop)
        watcher = FleetWatcher(broker.port)
        watcher.start()
        stack.callback(watcher.stop)
        rig = Rig(
            root=root,
            states=states,
            broker=broker,
            watcher=watcher,
            director=generate_director_key(),
            template=root / "template",
            stack=stack,
        )
        with rig.case("template", template=False) as template:
            template.start()
            template.send(template.envelope(1, [template.target(V1)]))
            template.wait_event(1, TERMINAL)
            template.wait_settled(1)
            template.assert_runs(V1, "a")
            template.kill()
            # A killed agent leaves its metrics socket behind; copytree cannot copy one.
            shutil.copytree(
                template.directory,
                rig.template,
                symlinks=True,
                ignore=shutil.ignore_patterns("metrics.sock"),
            )
        yield rig
