"""The embedded director key and fleet CA are created once however many processes start
together (a fresh `deploy/dev/up`: gunicorn's workers, the bridge, the Celery worker):
none fails, and every one of them reads the same key."""

import multiprocessing
from pathlib import Path

from device_agent.protocol.envelope import public_key_to_pem, read_private_key
from fleet import ca
from fleet.keys import create_key_once

PROCESSES = 8


def _race(path: str, barrier: "multiprocessing.synchronize.Barrier", out: "multiprocessing.Queue[object]") -> None:  # noqa: E501
    barrier.wait()
    try:
        create_key_once(Path(path))
        out.put(public_key_to_pem(read_private_key(path).public_key()))
    except Exception as exc:  # reported to the test, which fails on it
        out.put(repr(exc))


def test_processes_racing_to_create_the_key_all_read_one_key(tmp_path: Path) -> None:
    # given a keys directory without a director key, and processes starting together
    path = tmp_path / "keys" / "director.pem"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PROCESSES)
    out: multiprocessing.Queue[object] = context.Queue()
    workers = [
        context.Process(target=_race, args=(str(path), barrier, out)) for _ in range(PROCESSES)
    ]
    # when each creates the key unless it exists, then reads it
    for worker in workers:
        worker.start()
    results = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    # then none failed, all read the same key, it is the file's, and no temporary is left
    assert all(isinstance(r, bytes) for r in results), results
    assert len(set(results)) == 1
    assert results[0] == public_key_to_pem(read_private_key(path).public_key())
    assert sorted(p.name for p in path.parent.iterdir()) == ["director.pem"]
    assert path.stat().st_mode & 0o777 == 0o600


def _race_ca(barrier: "multiprocessing.synchronize.Barrier", out: "multiprocessing.Queue[object]") -> None:  # noqa: E501
    barrier.wait()
    try:
        key, cert = ca.ca_load_or_create()
        assert cert.public_key() == key.public_key()
        out.put(public_key_to_pem(key.public_key()))
    except Exception as exc:  # reported to the test, which fails on it
        out.put(repr(exc))


def test_processes_racing_to_create_the_fleet_ca_all_read_one_ca(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # given a keys directory without a CA (the forked processes inherit these settings)
    settings.FLEET_KEYS_DIR = tmp_path / "keys"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PROCESSES)
    out: multiprocessing.Queue[object] = context.Queue()
    workers = [context.Process(target=_race_ca, args=(barrier, out)) for _ in range(PROCESSES)]
    # when each loads the CA, creating it unless it exists
    for worker in workers:
        worker.start()
    results = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    # then none failed and all hold the same CA, the one on disk, with its key private
    assert all(isinstance(r, bytes) for r in results), results
    assert len(set(results)) == 1
    key, cert = ca.ca_load_or_create()
    assert results[0] == public_key_to_pem(key.public_key())
    assert (tmp_path / "keys" / ca.CA_KEY_FILE).stat().st_mode & 0o777 == 0o600
