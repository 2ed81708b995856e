"""The outbox queue: every envelope the director writes is queued with its seq in the same
transaction, a refused device is not, and the bridge takes a row off the queue only when
the broker acknowledged the seq queued (a newer one stays queued)."""

from datetime import timedelta
from typing import Any

import pytest
from director_factories import HW, ArtifactFactory, own_director_key
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from fleet.director import (
    ModelAssignment,
    desired_reissue_expiring,
    desired_states_mark_published,
    device_desired_reissue,
    device_desired_republish,
    device_desired_set,
    devices_desired_set,
)
from fleet.errors import ServiceError
from fleet.models import DesiredOutbox, DesiredState, Device

pytestmark = [pytest.mark.django_db, pytest.mark.db_both]


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    own_director_key(settings, tmp_path)


def _devices(count: int) -> list[Device]:
    return [Device.objects.create(device_id=f"dev-{i:03d}", hardware=HW) for i in range(count)]


def _queued() -> dict[int, int]:
    """device pk -> seq queued."""
    return dict(DesiredOutbox.objects.values_list("desired__device_id", "seq"))


def _seqs() -> dict[int, int]:
    return dict(DesiredState.objects.values_list("device_id", "seq"))


def _publish_all() -> None:
    acked = list(DesiredState.objects.values_list("pk", "seq"))
    desired_states_mark_published(published=acked, at=timezone.now())


def test_the_director_queues_each_row_it_writes_once_with_its_latest_seq() -> None:
    devices = _devices(30)
    first, second = (
        ArtifactFactory.create(),
        ArtifactFactory.create(version="1.1.0", release_counter=2),
    )
    # when the director signs a model for every device, then another before any went out
    for artifact in (first, second):
        result = devices_desired_set(
            devices=devices,
            assignments_for=lambda _, a=artifact: [ModelAssignment(a)],  # type: ignore[misc]
        )
        assert result.issued == 30
    # then each device is queued once, with its newest seq
    assert _queued() == _seqs()
    assert set(_seqs().values()) == {2}
    assert DesiredOutbox.objects.count() == 30


def test_a_refused_device_is_neither_written_nor_queued() -> None:
    devices = _devices(3)
    devices[1].revoked_at = timezone.now()
    devices[1].save()
    artifact = ArtifactFactory.create()
    result = devices_desired_set(
        devices=devices, assignments_for=lambda _: [ModelAssignment(artifact)]
    )
    assert set(result.refused) == {"dev-001"}
    assert set(_queued()) == {devices[0].pk, devices[2].pk}


def test_a_failed_transaction_queues_nothing() -> None:
    devices = _devices(5)
    artifact = ArtifactFactory.create()

    def fails_after_the_director_wrote() -> None:
        with transaction.atomic():
            devices_desired_set(
                devices=devices, assignments_for=lambda _: [ModelAssignment(artifact)]
            )
            raise RuntimeError("the caller's transaction fails")

    with pytest.raises(RuntimeError):
        fails_after_the_director_wrote()
    assert not DesiredOutbox.objects.exists()
    assert not DesiredState.objects.filter(seq__gt=0).exists()


def test_publication_takes_a_row_off_the_queue_only_for_the_seq_queued() -> None:
    devices = _devices(4)
    artifact = ArtifactFactory.create()
    devices_desired_set(devices=devices, assignments_for=lambda _: [ModelAssignment(artifact)])
    sent = list(DesiredState.objects.values_list("pk", "seq"))  # seq 1, handed to the broker
    # when two devices are signed again before the PUBACKs of seq 1 come back
    newer = ArtifactFactory.create(version="1.1.0", release_counter=2)
    devices_desired_set(devices=devices[:2], assignments_for=lambda _: [ModelAssignment(newer)])
    updated = desired_states_mark_published(published=sent, at=timezone.now())
    # then only the other two left the queue; the two stay queued with seq 2
    assert updated == 2
    assert _queued() == {devices[0].pk: 2, devices[1].pk: 2}
    _publish_all()
    assert not DesiredOutbox.objects.exists()
    assert set(DesiredState.objects.values_list("published_seq", flat=True)) == {1, 2}


def test_the_one_device_paths_queue_what_they_write(settings: Any) -> None:
    (device,) = _devices(1)
    # set
    row = device_desired_set(device=device, assignments=[ModelAssignment(ArtifactFactory.create())])
    assert _queued() == {device.pk: row.seq}
    _publish_all()
    assert _queued() == {}
    # re-issue
    row = device_desired_reissue(device=device)
    assert _queued() == {device.pk: row.seq}
    _publish_all()
    # republish: the same seq again
    device_desired_republish(device=device)
    assert _queued() == {device.pk: row.seq}
    assert DesiredState.objects.get(device=device).published_seq == 0
    _publish_all()
    # the hourly re-signing of expiring envelopes
    settings.FLEET_DESIRED_TTL = timedelta(hours=1)
    assert desired_reissue_expiring(within=timedelta(days=30)) == 1
    assert _queued() == {device.pk: row.seq + 1}


def test_a_republish_of_a_device_without_a_desired_state_queues_nothing() -> None:
    (device,) = _devices(1)
    with pytest.raises(ServiceError):
        device_desired_republish(device=device)
    assert not DesiredOutbox.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_queues_the_rows_that_were_behind() -> None:
    # given the schema before the outbox queue, with one row behind and one published
    before, after = ("fleet", "0008_deviceevent_device_index"), ("fleet", "0009_desired_outbox")
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate([before])
        old = executor.loader.project_state([before]).apps
        rows = {}
        for device_id, published in (("behind", 2), ("published", 3)):
            device = old.get_model("fleet", "Device").objects.create(
                device_id=device_id, hardware=HW
            )
            rows[device_id] = (
                old.get_model("fleet", "DesiredState")
                .objects.create(device=device, seq=3, published_seq=published, envelope=b"e")
                .pk
            )
        # when the migration runs
        executor = MigrationExecutor(connection)
        executor.migrate([after])
        # then the row behind is queued with its seq, and only it
        queued = dict(
            executor.loader.project_state([after])
            .apps.get_model("fleet", "DesiredOutbox")
            .objects.values_list("pk", "seq")
        )
    finally:
        # later migrations are applied again for the tests that follow
        MigrationExecutor(connection).migrate(leaves)
    assert queued == {rows["behind"]: 3}
