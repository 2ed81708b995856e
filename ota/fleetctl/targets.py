"""The model's TUF targets metadata: the new target's facts, its version and expiry, and
the release key's signature."""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Targets

from ota.fleetctl.http import CliError
from ota.fleetctl.multipart import CHUNK

RESERVED = {"version", "hardware", "format", "release_counter", "floor"}


def file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def parse_meta(items: list[str]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError("malformed", f"--meta {item!r} is not KEY=VALUE")
        if key in RESERVED:
            raise CliError("malformed", f"--meta {key} is set by its own option")
        try:
            # TUF signs canonical JSON, which has no floats: keep decimals as strings.
            facts[key] = json.loads(raw, parse_float=str)
        except ValueError:
            facts[key] = raw
    return facts


def next_metadata(current: Metadata[Targets] | None, expires_days: int) -> Metadata[Targets]:
    expires = (datetime.now(UTC) + timedelta(days=expires_days)).replace(microsecond=0)
    if current is None:
        return Metadata(Targets(version=1, expires=expires))
    current.signed.version += 1
    current.signed.expires = expires
    return current


def release_counter_for(md: Metadata[Targets], version: str) -> int:
    """The counter of an existing variant of this version, else one above every other."""
    counters = {}
    for target in md.signed.targets.values():
        custom = target.custom
        if isinstance(custom.get("release_counter"), int):
            counters[custom.get("version")] = custom["release_counter"]
    if version in counters:
        return int(counters[version])
    return max(counters.values(), default=0) + 1


def sign(md: Metadata[Targets], signer: Signer) -> None:
    md.signatures.clear()
    md.sign(signer)
