"""An agent directory and Runner without the control plane: a generated director key, a
fake TUF view, artifacts served by agent_http, events collected in lists."""

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from device_agent.config import AgentConfig, Layout
from device_agent.protocol.envelope import generate_director_key, sign_desired, write_public_key
from device_agent.protocol.messages import DesiredState, ModelTarget, ReportedState, UpdateEvent
from device_agent.runner import Runner

DEVICE = "dev-1"
HARDWARE = "linux-x86_64-fp32"


def tflite(seed: bytes, size: int = 50_000) -> bytes:
    body = hashlib.sha256(seed).digest() * (size // 32 + 1)
    return (b"\x1c\x00\x00\x00TFL3" + body)[:size]


@dataclass
class Release:
    version: str
    counter: int
    data: bytes
    floor: int = 0
    fmt: str = "tflite"
    name: str = "kws"
    custom: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"models/{self.name}/{self.version}/{HARDWARE}/model.{self.fmt}"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def target(self, url: str, **overrides: Any) -> ModelTarget:
        fields: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "version": self.version,
            "release_counter": self.counter,
            "hardware": HARDWARE,
            "sha256": self.sha256,
            "length": len(self.data),
            "url": url,
            "rollout_id": "r-1",
            "arm": None,
        }
        fields.update(overrides)
        return ModelTarget(**fields)

    def targetinfo(self) -> TargetFile:
        custom = {
            "version": self.version,
            "hardware": HARDWARE,
            "format": self.fmt,
            "release_counter": self.counter,
            "floor": self.floor,
            **self.custom,
        }
        return TargetFile(
            len(self.data),
            {"sha256": self.sha256},
            self.path,
            unrecognized_fields={"custom": custom},
        )


class FakeTuf:
    def __init__(self, releases: list[Release]) -> None:
        self.targets = {r.path: r.targetinfo() for r in releases}
        self.refreshes = 0

    def __call__(self) -> "FakeTuf":
        self.refreshes += 1
        return self

    def get_targetinfo(self, target_path: str) -> TargetFile | None:
        return self.targets.get(target_path)


class ListPublisher:
    def __init__(self) -> None:
        self.events: list[UpdateEvent] = []
        self.states: list[ReportedState] = []

    def event(self, event: UpdateEvent) -> None:
        self.events.append(event)

    def state(self, state: ReportedState) -> None:
        self.states.append(state)

    def phases(self, seq: int | None = None) -> list[str]:
        return [str(e.phase) for e in self.events if seq is None or e.seq == seq]


class Device:
    """An enrolled-looking agent directory plus the director key that signs for it."""

    def __init__(self, root: Path, **config: Any) -> None:
        self.root = root
        self.layout = Layout(root)
        self.layout.make_dirs()
        self.director = generate_director_key()
        write_public_key(self.layout.director_key, self.director.public_key())
        self.layout.trust_root.write_text("{}")
        settings: dict[str, Any] = {
            "device_id": DEVICE,
            "hardware": HARDWARE,
            "server_url": "http://127.0.0.1:9",
            "tuf_url": "http://127.0.0.1:9/tuf/",
            "broker_url": "mqtt://127.0.0.1:9",
            "trial_deadline_s": 30.0,
            "download_stall_s": 2.0,
            "download_attempts": 2,
            "download_backoff_s": 0.01,
        }
        settings.update(config)
        self.config = AgentConfig(**settings)
        self.config.save(root)
        self.publisher = ListPublisher()
        self.tuf = FakeTuf([])

    def runner(self, clock: datetime | None = None) -> Runner:
        runner = Runner(
            self.root,
            self.config,
            publisher=self.publisher,
            clock=(lambda: clock) if clock else (lambda: datetime.now(UTC)),
        )
        runner.tuf = self.tuf
        return runner

    def envelope(
        self,
        seq: int,
        targets: list[ModelTarget],
        *,
        device_id: str = DEVICE,
        issued_at: datetime | None = None,
        expires_in: timedelta = timedelta(days=1),
    ) -> bytes:
        issued = (issued_at or datetime.now(UTC)).replace(microsecond=0)
        desired = DesiredState(
            device_id=device_id,
            seq=seq,
            issued_at=issued,
            expires_at=issued + expires_in,
            models=tuple(targets),
        )
        return sign_desired(desired, self.director)

    def current_bytes(self, name: str = "kws", filename: str = "model.tflite") -> bytes | None:
        try:
            return (self.layout.models / name / "current" / filename).read_bytes()
        except OSError:
            return None
