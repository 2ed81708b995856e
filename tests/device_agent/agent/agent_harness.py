"""End-to-end helpers: publish with fleetctl, enroll and run the agent as a real process,
sign and send desired states, and watch the device's MQTT topics."""

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.protocol.envelope import sign_desired
from device_agent.protocol.messages import (
    DesiredState,
    ModelTarget,
    parse_event,
    parse_state,
)
from device_agent.protocol.topics import Channel, topic_for

REPO = Path(__file__).resolve().parents[3]
HARDWARE = "linux-x86_64-fp32"


def tflite_bytes(size: int, seed: bytes = b"") -> bytes:
    """Bytes that pass the TFLite format check (TFL3 at offset 4)."""
    body = hashlib.sha256(seed).digest() * (size // 32 + 1)
    return (b"\x1c\x00\x00\x00TFL3" + body)[:size]


@dataclass
class Artifact:
    name: str
    version: str
    path: Path
    fmt: str
    counter: int
    hardware: str = HARDWARE

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def target_path(self) -> str:
        return f"models/{self.name}/{self.version}/{self.hardware}/{self.path.name}"

    def url(self, server: str) -> str:
        directory, _, filename = self.target_path.rpartition("/")
        return f"{server}/tuf/targets/{directory}/{self.sha256}.{filename}"

    def target(self, server: str, **overrides: Any) -> ModelTarget:
        fields: dict[str, Any] = {
            "name": self.name,
            "path": self.target_path,
            "version": self.version,
            "release_counter": self.counter,
            "hardware": self.hardware,
            "sha256": self.sha256,
            "length": len(self.data),
            "url": self.url(server),
            "rollout_id": "r-1",
            "arm": "A",
        }
        fields.update(overrides)
        return ModelTarget(**fields)


def publish(
    tmp_path: Path,
    data: bytes,
    *,
    version: str,
    counter: int,
    fmt: str = "tflite",
    name: str = "kws",
    meta: list[str] | None = None,
) -> Artifact:
    """Publish through fleetctl (ota.cli.main); FLEET_* must be in the environment."""
    from ota import cli

    directory = tmp_path / "artifacts-src" / version
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"model.{fmt}"
    path.write_bytes(data)
    argv = ["publish", str(path), "--name", name, "--version", version]
    argv += ["--hardware", HARDWARE, "--format", fmt, "--release-counter", str(counter)]
    for item in meta or []:
        argv += ["--meta", item]
    assert cli.main(argv) == 0
    return Artifact(name=name, version=version, path=path, fmt=fmt, counter=counter)


def desired_envelope(
    device_id: str,
    seq: int,
    targets: list[ModelTarget],
    *,
    issued_at: datetime | None = None,
    expires_in: timedelta = timedelta(days=7),
    key: Any = None,
) -> bytes:
    """A desired state signed with ``key`` (default: the control plane's director key)."""
    if key is None:
        from fleet.keys import director_private_key

        key = director_private_key()
    issued = (issued_at or datetime.now(UTC)).replace(microsecond=0)
    desired = DesiredState(
        device_id=device_id,
        seq=seq,
        issued_at=issued,
        expires_at=issued + expires_in,
        models=tuple(targets),
    )
    return sign_desired(desired, key)


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def agent_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_agent.cli", *args],
        cwd=REPO,
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class AgentProcess:
    """`fleet-agent run` as a subprocess, its output in a log file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory.parent / f"{directory.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "device_agent.cli", "-v", "run", "--dir", str(self.directory)],
            cwd=REPO,
            env=agent_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except OSError:
            return "(no log)"


@dataclass
class Watcher:
    """A paho client on the device's events/state/status topics."""

    port: int
    device_id: str
    events: list[Any] = field(default_factory=list)
    states: list[Any] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _client: paho.Client | None = None

    def start(self) -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{self.device_id}")
        subscribed: queue.Queue[bool] = queue.Queue()

        def on_connect(c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe(
                [
                    (topic_for(self.device_id, Channel.EVENTS), 1),
                    (topic_for(self.device_id, Channel.STATE), 1),
                    (topic_for(self.device_id, Channel.STATUS), 1),
                ]
            )

        def on_subscribe(c: paho.Client, u: Any, mid: Any, rcs: Any, p: Any) -> None:
            subscribed.put(True)

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            channel = msg.topic.rsplit("/", 1)[-1]
            with self._changed:
                if channel == "events":
                    self.events.append(parse_event(bytes(msg.payload)))
                elif channel == "state":
                    self.states.append(parse_state(bytes(msg.payload)))
                else:
                    self.statuses.append(json.loads(msg.payload)["status"])
                self._changed.notify_all()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        subscribed.get(timeout=10)
        self._client = client

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def send_desired(self, envelope: bytes) -> None:
        assert self._client is not None
        info = self._client.publish(
            topic_for(self.device_id, Channel.DESIRED), envelope, qos=1, retain=True
        )
        info.wait_for_publish(10)

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float, what: str, log: Callable[[], str]
    ) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what}; events: "
                        f"{[(e.seq, e.model, e.phase, e.code, e.detail) for e in self.events]}"
                        f"\n--- agent log ---\n{log()}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def event(self, seq: int, phase: str, model: str | None = "kws") -> Any:
        for e in self.events:
            if e.seq == seq and e.phase == phase and e.model == model:
                return e
        return None


def current_sha256(agent_dir: Path, model: str, filename: str) -> str | None:
    path = agent_dir / "models" / model / "current" / filename
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
