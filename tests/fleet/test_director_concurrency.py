"""Concurrent writers of one device's desired state: the row lock orders them, so seqs are
distinct and consecutive and no writer's models are lost."""

import threading
import time
from collections.abc import Callable

import pytest
from director_factories import HW, ArtifactFactory, ModelFactory, own_director_key
from django.db import connection

from device_agent.protocol.envelope import verify_desired
from fleet import director
from fleet.director import ModelAssignment, device_desired_set, devices_desired_set
from fleet.keys import director_public_pem
from fleet.models import DesiredState, Device

ROUNDS = 8


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path, monkeypatch):
    own_director_key(settings, tmp_path)
    # Sign slowly, inside the lock: without it the writers would surely interleave.
    real_sign = director.sign_envelope

    def slow_sign(*args, **kwargs):
        time.sleep(0.005)
        return real_sign(*args, **kwargs)

    monkeypatch.setattr(director, "sign_envelope", slow_sign)


def _in_threads(*jobs: Callable[[], None]) -> None:
    barrier = threading.Barrier(len(jobs), timeout=30)
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer hung (deadlock?)"
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
def test_two_writers_on_one_device_get_consecutive_seqs():
    # given a device with no desired state yet (both writers race to create the row)
    device = Device.objects.create(device_id="dev-0001", hardware=HW)
    kws = [ArtifactFactory.create(version=f"1.{i}.0", release_counter=i + 1) for i in range(ROUNDS)]
    vad_model = ModelFactory.create(name="vad")
    vad = [
        ArtifactFactory.create(model=vad_model, version=f"2.{i}.0", release_counter=i + 1)
        for i in range(ROUNDS)
    ]
    seqs: dict[str, list[int]] = {"kws": [], "vad": []}

    def writer(name: str, artifacts: list) -> Callable[[], None]:
        def job() -> None:
            for artifact in artifacts:
                row = device_desired_set(
                    device=device, assignments=[ModelAssignment(artifact=artifact)]
                )
                seqs[name].append(row.seq)

        return job

    # when two writers assign different models at the same time
    _in_threads(writer("kws", kws), writer("vad", vad))

    # then every write got its own seq, 1..2N without gaps or duplicates, in call order
    assert sorted(seqs["kws"] + seqs["vad"]) == list(range(1, 2 * ROUNDS + 1))
    assert seqs["kws"] == sorted(seqs["kws"])
    assert seqs["vad"] == sorted(seqs["vad"])
    # and the last envelope holds both writers' last models: no lost update
    row = DesiredState.objects.get(device=device)
    desired = verify_desired(bytes(row.envelope), director_public_pem())
    assert desired.seq == 2 * ROUNDS
    assert {m.name: m.version for m in desired.models} == {
        "kws": f"1.{ROUNDS - 1}.0",
        "vad": f"2.{ROUNDS - 1}.0",
    }


@pytest.mark.django_db(transaction=True)
def test_overlapping_bulk_writers_neither_deadlock_nor_lose_models():
    # given 30 devices, half of which already have a desired state
    devices = [Device.objects.create(device_id=f"dev-{i:03d}", hardware=HW) for i in range(30)]
    kws = ArtifactFactory.create()
    vad = ArtifactFactory.create(model=ModelFactory.create(name="vad"))
    devices_desired_set(devices=devices[::2], assignments_for=lambda d: [])

    # when two bulk writers cover overlapping devices (listed in opposite orders), both
    # starting on the shared ones
    def bulk(chosen: list[Device], artifact) -> Callable[[], None]:
        def job() -> None:
            devices_desired_set(
                devices=chosen,
                assignments_for=lambda d: [ModelAssignment(artifact=artifact)],
                batch_size=4,
            )

        return job

    _in_threads(bulk(devices[:20], kws), bulk((devices[:10] + devices[20:])[::-1], vad))

    # then each device has one write per writer (plus the first) and both models if both
    for device in devices:
        row = DesiredState.objects.get(device=device)
        desired = verify_desired(bytes(row.envelope), director_public_pem())
        index = int(device.device_id[4:])
        expected = {"kws", "vad"} if index < 10 else {"kws"} if index < 20 else {"vad"}
        first = 1 if index % 2 == 0 else 0
        assert {m.name for m in desired.models} == expected, device
        assert desired.seq == row.seq == first + len(expected), device
