"""The agent's persistent state (`state.json`): what survives every update.

The last accepted desired `seq` (and its digest, so the retained copy redelivered on
each reconnect is recognised), the last trusted time (expiry is judged against
max(clock, this), so a device whose clock was reset still refuses stale commands),
and per model the anti-rollback floor and what each slot holds. Written atomically
(temp + fsync + os.replace + fsync dir), mode 0600.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from device_agent.protocol.fsutil import write_json_atomic
from device_agent.protocol.messages import (
    Phase,
    Slot,
    format_timestamp,
    parse_timestamp,
)

STORE_VERSION = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class Installed:
    """A model version sitting in one slot."""

    version: str
    release_counter: int
    sha256: str
    length: int
    slot: Slot
    filename: str
    format: str
    # The rollout and arm it runs under: those of the desired entry it was installed for,
    # then of each later accepted entry that names the same bytes (telemetry tags).
    rollout_id: str | None = None
    arm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "release_counter": self.release_counter,
            "sha256": self.sha256,
            "length": self.length,
            "slot": str(self.slot),
            "filename": self.filename,
            "format": self.format,
            "rollout_id": self.rollout_id,
            "arm": self.arm,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Installed":
        return cls(
            version=str(data["version"]),
            release_counter=int(data["release_counter"]),
            sha256=str(data["sha256"]),
            length=int(data["length"]),
            slot=Slot(data["slot"]),
            filename=str(data["filename"]),
            format=str(data["format"]),
            rollout_id=data.get("rollout_id"),
            arm=data.get("arm"),
        )


@dataclass(kw_only=True, slots=True)
class ModelRecord:
    """Per model: the floor, the live version, the one in the other slot, last phase."""

    floor: int = 0
    installed: Installed | None = None
    previous: Installed | None = None
    status: Phase | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "installed": None if self.installed is None else self.installed.to_dict(),
            "previous": None if self.previous is None else self.previous.to_dict(),
            "status": None if self.status is None else str(self.status),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelRecord":
        return cls(
            floor=int(data.get("floor", 0)),
            installed=Installed.from_dict(data["installed"]) if data.get("installed") else None,
            previous=Installed.from_dict(data["previous"]) if data.get("previous") else None,
            status=Phase(data["status"]) if data.get("status") else None,
        )


@dataclass(kw_only=True, slots=True)
class AgentStore:
    """Everything in state.json. Mutate, then `save()`."""

    path: Path
    last_seq: int | None = None
    last_digest: str | None = None
    last_trusted_time: datetime | None = None
    models: dict[str, ModelRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "AgentStore":
        """Read state.json; a missing file is a fresh device."""
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path=path)
        trusted = data.get("last_trusted_time")
        return cls(
            path=path,
            last_seq=data.get("last_seq"),
            last_digest=data.get("last_digest"),
            last_trusted_time=parse_timestamp(trusted) if trusted else None,
            models={
                name: ModelRecord.from_dict(record)
                for name, record in data.get("models", {}).items()
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STORE_VERSION,
            "last_seq": self.last_seq,
            "last_digest": self.last_digest,
            "last_trusted_time": None
            if self.last_trusted_time is None
            else format_timestamp(self.last_trusted_time),
            "models": {name: record.to_dict() for name, record in sorted(self.models.items())},
        }

    def save(self) -> None:
        write_json_atomic(self.path, self.to_dict())

    def model(self, name: str) -> ModelRecord:
        """The record of `name`, created (unsaved) when absent."""
        return self.models.setdefault(name, ModelRecord())

    def floor(self, name: str) -> int:
        record = self.models.get(name)
        return record.floor if record else 0
