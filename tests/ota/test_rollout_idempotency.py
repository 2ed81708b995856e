"""Evaluations are idempotent: twice in a row, or concurrently from several threads, every
device is notified once; redelivered events change nothing. The rollout's row lock
serialises evaluations on PostgreSQL; on SQLite its IMMEDIATE transactions do."""

import threading
from collections.abc import Callable

import pytest
from django.db import connection
from rollout_helpers import (
    artifact,
    desired_seq,
    devices,
    evaluate,
    later,
    phased,
    report,
    rows,
    use_own_director_key,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase, UpdateEvent
from fleet.models import DesiredState
from fleet.reports import device_event_record
from ota import engine
from ota.models import RolloutDevice


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


@pytest.fixture
def _no_evaluation_after_commit(monkeypatch):
    # With real commits, the operator's start queues an (eager) evaluation at once; these
    # tests want the evaluations to race each other instead.
    from ota import tasks

    monkeypatch.setattr(tasks.rollout_evaluate_task, "delay", lambda *args: None)


@pytest.mark.django_db
def test_evaluating_twice_notifies_once():
    artifact("2.0.0")
    fleet = devices(20)
    rollout = phased()
    at = later()

    assert evaluate(rollout, at).notified == 20
    again = evaluate(rollout, at)

    assert again.notified == 0
    assert {desired_seq(d) for d in fleet} == {1}
    assert {r.attempts for r in rows(rollout)} == {1}


@pytest.mark.django_db
def test_a_redelivered_event_is_counted_once():
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased()
    evaluate(rollout)
    at = later()

    assert report(device, rollout, Phase.FAILED, at=at) is True
    evaluate(rollout)
    first = rows(rollout)[0]

    # a second failure event, then delivered again (the broker redelivers what the bridge
    # had not acknowledged): stored once, and the device's outcome is unchanged
    event = UpdateEvent(
        seq=desired_seq(device),
        rollout_id=rollout.public_id,
        model="kws",
        phase=Phase.FAILED,
        progress=None,
        code=ErrorCode.DISK_FULL,
        detail="same",
        ts=at.replace(microsecond=0),
    )
    assert device_event_record(device=device, event=event)[1] is True
    assert device_event_record(device=device, event=event)[1] is False
    evaluate(rollout)
    evaluate(rollout)

    row = rows(rollout)[0]
    assert (row.state, row.attempts) == ("failed", first.attempts)


def _in_threads(jobs: list[Callable[[], object]]) -> None:
    barrier = threading.Barrier(len(jobs), timeout=30)
    errors: list[BaseException] = []

    def run(job: Callable[[], object]) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as exc:  # surfaced in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an evaluation hung (deadlock?)"
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_no_evaluation_after_commit")
def test_concurrent_evaluations_notify_every_device_once():
    artifact("2.0.0")
    fleet = devices(60)
    rollout = phased(policy={"rate_per_minute": 1000})
    at = later()
    results: list[engine.Evaluation] = []

    _in_threads(
        [lambda: results.append(engine.rollout_evaluate(rollout_id=rollout.public_id, now=at))] * 6
    )

    assert sum(r.notified for r in results) == 60
    assert sorted(r.notified for r in results)[:-1] == [0] * 5  # one did it all
    assert set(DesiredState.objects.filter(device__in=fleet).values_list("seq", flat=True)) == {1}
    assert set(
        RolloutDevice.objects.filter(rollout=rollout).values_list("attempts", flat=True)
    ) == {1}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_no_evaluation_after_commit")
def test_concurrent_evaluations_of_a_paced_rollout_respect_the_rate():
    artifact("2.0.0")
    devices(50)
    rollout = phased(policy={"rate_per_minute": 7})
    at = later()

    _in_threads([lambda: engine.rollout_evaluate(rollout_id=rollout.public_id, now=at)] * 5)

    assert RolloutDevice.objects.filter(rollout=rollout, attempts=1).count() == 7
    # each of the seven got exactly one envelope (a second writer would have bumped seq)
    assert list(DesiredState.objects.values_list("seq", flat=True)) == [1] * 7
