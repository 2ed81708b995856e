"""The quick start's data directory is the operator's alone: the SQLite database holds
session keys and token hashes, the directory the secret key, TUF, CA and CI keys."""

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fleet_up_prepare(data: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEET_", "DATABASE_URL", "DJANGO_", "CELERY_"))
    }
    env["FLEET_DATA_DIR"] = str(data)
    subprocess.run(
        [sys.executable, "manage.py", "fleet_up", "--no-serve", "--devices", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=240,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_quick_start_data_dir_and_everything_in_it_are_owner_only(tmp_path: Path) -> None:
    # given a umask that would leave new files world-readable, as on most desktops
    data = tmp_path / "var"
    old = os.umask(0o022)
    try:
        _fleet_up_prepare(data)
    finally:
        os.umask(old)

    # then
    assert _mode(data) == 0o700
    assert _mode(data / "fleet.sqlite3") == 0o600
    written = list(data.rglob("*"))
    assert data / "secret_key" in written
    assert data / "ci" / "token" in written
    assert any(p.parent.name == "keys" for p in written)  # the TUF keys are there
    wide = {str(p.relative_to(data)): oct(_mode(p)) for p in written if _mode(p) & 0o077}
    assert wide == {}


def test_an_older_world_readable_data_dir_is_narrowed(tmp_path: Path) -> None:
    # given the data directory and database of an older quick start
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "fleet.sqlite3").touch()
    (data / "fleet.sqlite3").chmod(0o644)

    # when it starts again
    _fleet_up_prepare(data)

    # then
    assert _mode(data) == 0o700
    assert _mode(data / "fleet.sqlite3") == 0o600
