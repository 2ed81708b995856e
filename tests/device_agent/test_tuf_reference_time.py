"""The agent's one private use of python-tuf (device_agent/tuf_reference_time.py): fails
loudly when the installed python-tuf is not the pinned release or stops honouring the
reference time, and proves the attribute still decides expiry on a real refresh."""

import importlib.metadata
import re
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import FetcherInterface, Updater

from device_agent.tuf_reference_time import TUF_PINNED, reference_time_set

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)


class _Memory(FetcherInterface):
    """Serves a repository from a dict (url -> bytes); 404 for anything else."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def _fetch(self, url: str) -> Iterator[bytes]:
        if url not in self.files:
            raise tuf_exceptions.DownloadHTTPError("not found", 404)
        return iter([self.files[url]])


def _repository(*, model_expires: datetime) -> tuple[bytes, dict[str, bytes]]:
    """A one-key repository: top-level roles valid for 30 days, one delegated model role
    (`kws`, models/kws/*) expiring at `model_expires`."""
    signer = CryptoSigner.generate_ecdsa()
    key = signer.public_key
    root = Root(expires=NOW + timedelta(days=365), consistent_snapshot=False)
    for role in ("root", "timestamp", "snapshot", "targets"):
        root.add_key(key, role)
    model = Targets(expires=model_expires)
    model.targets["models/kws/1.bin"] = TargetFile.from_data("models/kws/1.bin", b"m")
    top = Targets(expires=NOW + timedelta(days=30))
    top.delegations = Delegations(
        keys={key.keyid: key},
        roles={
            "kws": DelegatedRole(
                name="kws",
                keyids=[key.keyid],
                threshold=1,
                terminating=True,
                paths=["models/kws/*"],
            )
        },
    )
    snapshot = Snapshot(expires=NOW + timedelta(days=30))
    snapshot.meta = {"targets.json": MetaFile(1), "kws.json": MetaFile(1)}
    timestamp = Timestamp(expires=NOW + timedelta(days=30), snapshot_meta=MetaFile(1))
    out = {}
    for name, signed in (
        ("root", root),
        ("timestamp", timestamp),
        ("snapshot", snapshot),
        ("targets", top),
        ("kws", model),
    ):
        md: Metadata[Any] = Metadata(signed)
        md.sign(signer)
        out[name] = md.to_bytes(JSONSerializer())
    base = "https://tuf.test/"
    return out["root"], {f"{base}{name}.json": data for name, data in out.items() if name != "root"}


def _updater(tmp_path: Path, root: bytes, files: dict[str, bytes]) -> Updater:
    return Updater(
        metadata_dir=str(tmp_path),
        metadata_base_url="https://tuf.test/",
        fetcher=_Memory(files),
        bootstrap=root,
    )


def test_the_installed_python_tuf_is_the_pinned_release() -> None:
    installed = importlib.metadata.version("tuf")
    assert installed == TUF_PINNED, (
        f"python-tuf {installed} is installed, device_agent/tuf_reference_time.py was checked "
        f"against {TUF_PINNED}: re-check its private attribute, then move the pin"
    )
    for pyproject in (ROOT / "pyproject.toml", ROOT / "deploy/agent/pyproject.toml"):
        deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        tuf_deps = [d for d in deps if re.match(r"tuf\b", d)]
        assert tuf_deps == [f"tuf=={TUF_PINNED}"], pyproject


@pytest.mark.parametrize(("days", "expired"), [(0, False), (29, False), (31, True)])
def test_the_reference_time_decides_expiry_of_top_level_metadata(
    tmp_path: Path, days: int, expired: bool
) -> None:
    root, files = _repository(model_expires=NOW + timedelta(days=60))
    updater = _updater(tmp_path, root, files)
    reference_time_set(updater, NOW + timedelta(days=days))
    if expired:
        with pytest.raises(tuf_exceptions.ExpiredMetadataError):
            updater.refresh()
    else:
        updater.refresh()


def test_the_reference_time_decides_expiry_of_a_delegated_role(tmp_path: Path) -> None:
    # given a model role expiring in 10 days, everything else in 30
    root, files = _repository(model_expires=NOW + timedelta(days=10))
    # then on the system clock the lookup works
    fresh = _updater(tmp_path / "a", root, files)
    assert fresh.get_targetinfo("models/kws/1.bin") is not None
    # and 20 days on (a clock set back by that much) the model role is expired
    later = _updater(tmp_path / "b", root, files)
    reference_time_set(later, NOW + timedelta(days=20))
    later.refresh()
    with pytest.raises(tuf_exceptions.ExpiredMetadataError, match="kws"):
        later.get_targetinfo("models/kws/1.bin")


def test_a_python_tuf_without_the_attribute_fails_loudly(tmp_path: Path) -> None:
    root, files = _repository(model_expires=NOW + timedelta(days=60))
    updater = _updater(tmp_path, root, files)
    del updater._trusted_set  # what a python-tuf that renamed it would look like
    with pytest.raises(RuntimeError, match="python-tuf changed"):
        reference_time_set(updater, NOW)


def test_a_naive_reference_time_is_refused(tmp_path: Path) -> None:
    root, files = _repository(model_expires=NOW + timedelta(days=60))
    with pytest.raises(ValueError, match="timezone-aware"):
        reference_time_set(_updater(tmp_path, root, files), datetime(2030, 1, 1))  # noqa: DTZ001
