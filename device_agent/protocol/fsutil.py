"""Crash-safe file writes: a reader sees the old content or the new, never a mix."""

import contextlib
import json
import os
import secrets
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename, link or unlink inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: Path, mode: int) -> None:
    """Create `path` (and its parents) if missing, then give it exactly `mode`.

    mkdir's mode is masked by the umask: under systemd's UMask=0077 a model directory meant
    to be 0755 came out 0700, and applications running as other users could not read
    models/<name>/current/. Parents created here get the umask's mode; callers make each
    directory that must be reachable explicitly.
    """
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, shared: bool = False) -> None:
    """Temp file + fsync + os.replace + fsync(dir) (crash-safe: the old or the new file).

    ``shared``: processes may write `path` at the same time (the control plane's web
    workers write the CRL), so each uses a temporary name of its own; with one name, one
    writer's rename found the other's file gone. Otherwise the one name is reused, and a
    temporary file a crash left behind is replaced rather than kept.
    """
    if shared:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    else:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_once(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create `path` with `data` unless it exists, safely when processes race to do it.

    Each writes its own temporary file and links it to `path`: link(2) fails when `path`
    exists, so the first file stays whole and the others are dropped, and a reader that
    finds `path` finds it complete. (Opening `path` with O_EXCL and then writing lets a
    reader see it empty; a rename over it lets a later writer replace what an earlier
    process already read.)
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    write_atomic(tmp, data, mode=mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process's file came first
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: object, *, mode: int = 0o600) -> None:
    """`obj` as indented UTF-8 JSON, written with write_atomic."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n", mode=mode)


def remove_durably(path: Path) -> None:
    """Unlink `path` (missing is fine) and fsync its directory."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)
