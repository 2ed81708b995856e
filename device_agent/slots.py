"""Two slots per model and the `current` symlink that applications read (docs/architecture.md).

    models/<name>/slots/{a,b}/<file>
    models/<name>/current -> slots/a

A swap makes a new symlink under a temporary name and os.replace()s it over
`current` (rename(2) is atomic), then fsyncs the directory: a reader opening
`current/<file>` sees the old model or the new one, never neither.
"""

import contextlib
import os
import shutil
from pathlib import Path

from device_agent.protocol.fsutil import fsync_dir, make_dir
from device_agent.protocol.messages import Slot
from device_agent.testhooks import crashpoint

COPY_CHUNK = 1024 * 1024


def other(slot: Slot) -> Slot:
    return Slot.B if slot is Slot.A else Slot.A


class ModelSlots:
    """The slots of one model under `models_dir/<name>`."""

    def __init__(self, models_dir: Path, name: str) -> None:
        self.base = models_dir / name
        self.current_link = self.base / "current"

    def slot_dir(self, slot: Slot) -> Path:
        return self.base / "slots" / str(slot)

    def current(self) -> Slot | None:
        """The slot `current` points at, None when there is no (valid) link."""
        try:
            target = os.readlink(self.current_link)
        except (FileNotFoundError, OSError):
            return None
        for slot in Slot:
            if target == f"slots/{slot}":
                return slot
        return None

    def inactive(self) -> Slot:
        """The slot an update is staged into: the one `current` does not point at."""
        live = self.current()
        return Slot.A if live is None else other(live)

    def stage(self, slot: Slot, source: Path, filename: str) -> Path:
        """Empty `slot` and put `source` in it as `filename` (hard link, else a copy).

        Idempotent: staging again after a crash starts from an empty slot. Refuses
        to touch the live slot.
        """
        if self.current() is slot:
            raise RuntimeError(f"refusing to stage into the live slot {slot} of {self.base}")
        directory = self.slot_dir(slot)
        self.wipe(slot)
        crashpoint("stage:wiped")
        # Applications (maybe other users) read current/<file>: every level readable,
        # whatever the agent's umask.
        for level in (self.base, directory.parent, directory):
            make_dir(level, 0o755)
        dest = directory / filename
        try:
            os.link(source, dest)
        except OSError:  # another filesystem, or no hard links: copy
            tmp = directory / f".{filename}.tmp"
            with source.open("rb") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, dest)
        dest.chmod(0o644)
        fsync_dir(directory)
        fsync_dir(directory.parent)
        return dest

    def wipe(self, slot: Slot) -> None:
        """Remove the slot's contents (never the live slot)."""
        if self.current() is slot:
            raise RuntimeError(f"refusing to wipe the live slot {slot} of {self.base}")
        directory = self.slot_dir(slot)
        if directory.exists() or directory.is_symlink():
            shutil.rmtree(directory)
            fsync_dir(directory.parent)

    def swap(self, slot: Slot) -> None:
        """Atomically point `current` at `slot` (idempotent)."""
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = self.base / ".current.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"slots/{slot}", tmp)
        os.replace(tmp, self.current_link)
        fsync_dir(self.base)

    def remove_current(self) -> None:
        """Drop `current` (rolling back a model that had no previous version)."""
        with contextlib.suppress(FileNotFoundError):
            self.current_link.unlink()
            fsync_dir(self.base)

    def file(self, slot: Slot, filename: str) -> Path:
        return self.slot_dir(slot) / filename
