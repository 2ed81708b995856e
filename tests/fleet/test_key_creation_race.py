"""The embedded director key and fleet CA are created once however many processes start
together (a fresh `deploy/dev/up`: gunicorn's workers, the bridge, the Celery worker):
none fails, and every one of them reads the same key.

Real processes (not forks of this multi-threaded one), each waiting for a go file so they
all create at the same moment.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from device_agent.protocol.envelope import public_key_to_pem, read_private_key

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 8

_WAIT_FOR_GO = """
import os, sys, time
from pathlib import Path
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
import django
django.setup()
ready.touch()
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
"""

_DIRECTOR = (
    _WAIT_FOR_GO
    + """
from fleet.keys import director_private_key
from device_agent.protocol.envelope import public_key_to_pem
sys.stdout.write(public_key_to_pem(director_private_key().public_key()).decode())
"""
)

_CA = (
    _WAIT_FOR_GO
    + """
from fleet.ca import ca_load_or_create
from device_agent.protocol.envelope import public_key_to_pem
key, cert = ca_load_or_create()
assert cert.public_key() == key.public_key()
sys.stdout.write(public_key_to_pem(key.public_key()).decode())
"""
)


def _race(script: str, keys: Path, tmp_path: Path) -> list[str]:
    """Start PROCESSES interpreters running ``script`` on ``keys``, let them go together,
    and return what each printed (failing on any error)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
        "FLEET_DATA_DIR": str(tmp_path / "data"),
        "FLEET_KEYS_DIR": str(keys),
    }
    go = tmp_path / "go"
    children = []
    for n in range(PROCESSES):
        ready = tmp_path / f"ready-{n}"
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(ready), str(go)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append((child, ready))
    deadline = time.monotonic() + 60
    while not all(ready.exists() for _, ready in children):
        assert time.monotonic() < deadline, "the processes did not start"
        assert all(child.poll() is None for child, _ in children), "a process ended early"
        time.sleep(0.01)
    go.touch()
    outputs = []
    for child, _ in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err[-3000:]
        outputs.append(out)
    return outputs


def test_processes_racing_to_create_the_director_key_all_read_one_key(tmp_path: Path) -> None:
    # given a keys directory without a director key, when processes start together
    keys = tmp_path / "keys"
    outputs = _race(_DIRECTOR, keys, tmp_path)
    # then none failed, all read the same key, it is the file's, and no temporary is left
    assert len(set(outputs)) == 1
    path = keys / "director.pem"
    assert outputs[0] == public_key_to_pem(read_private_key(path).public_key()).decode()
    assert sorted(p.name for p in keys.iterdir()) == ["director.pem"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_processes_racing_to_create_the_fleet_ca_all_read_one_ca(tmp_path: Path) -> None:
    # given a keys directory without a CA, when processes start together
    keys = tmp_path / "keys"
    outputs = _race(_CA, keys, tmp_path)
    # then none failed and all hold the same CA, with its key private
    assert len(set(outputs)) == 1
    on_disk = read_private_key(keys / "fleet-ca.key").public_key()
    assert outputs[0] == public_key_to_pem(on_disk).decode()
    assert (keys / "fleet-ca.key").stat().st_mode & 0o777 == 0o600
