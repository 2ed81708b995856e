"""Seq only ever grows: set, re-issue and merge; republish sends the same envelope again."""

from datetime import timedelta

import pytest
from director_factories import HW, ArtifactFactory, ModelFactory, own_director_key
from django.utils import timezone

from device_agent.protocol.envelope import verify_desired
from device_agent.protocol.errors import ErrorCode
from fleet import director
from fleet.director import (
    ModelAssignment,
    device_desired_reissue,
    device_desired_republish,
    device_desired_set,
)
from fleet.errors import ServiceError
from fleet.keys import director_public_pem
from fleet.models import DesiredState, Device

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    own_director_key(settings, tmp_path)


@pytest.fixture
def device() -> Device:
    return Device.objects.create(device_id="dev-0001", hardware=HW)


def _models(row: DesiredState) -> dict[str, tuple[str, str | None]]:
    desired = verify_desired(bytes(row.envelope), director_public_pem())
    return {m.name: (m.version, m.rollout_id) for m in desired.models}


def test_seq_strictly_increases_across_set_and_reissue(device):
    v1 = ArtifactFactory.create(version="1.0.0", release_counter=1)
    v2 = ArtifactFactory.create(version="1.1.0", release_counter=2)

    seqs = [device_desired_set(device=device, assignments=[ModelAssignment(artifact=v1)]).seq]
    seqs.append(device_desired_reissue(device=device).seq)
    seqs.append(device_desired_set(device=device, assignments=[ModelAssignment(artifact=v2)]).seq)
    seqs.append(device_desired_reissue(device=device).seq)

    assert seqs == [1, 2, 3, 4]
    row = DesiredState.objects.get(device=device)
    assert verify_desired(bytes(row.envelope), director_public_pem()).seq == 4
    assert _models(row) == {"kws": ("1.1.0", None)}


def test_reissue_keeps_models_and_renews_expiry(device, monkeypatch):
    # given a desired state signed a day ago
    artifact = ArtifactFactory.create()
    a_day_ago = timezone.now() - timedelta(days=1)
    monkeypatch.setattr(director.timezone, "now", lambda: a_day_ago)
    first = device_desired_set(
        device=device, assignments=[ModelAssignment(artifact=artifact, rollout_id="r-1", arm="A")]
    )
    monkeypatch.undo()

    # when it is re-issued
    again = device_desired_reissue(device=device)

    # then the same models are signed with a new seq and an expiry a day later
    old = verify_desired(bytes(first.envelope), director_public_pem())
    new = verify_desired(bytes(again.envelope), director_public_pem())
    assert new.models == old.models
    assert new.seq == old.seq + 1
    assert timedelta(hours=23) < new.expires_at - old.expires_at <= timedelta(days=1, seconds=2)
    assert again.issued_at == new.issued_at


def test_assigning_one_model_keeps_the_others(device):
    # given a device told to run kws 1.0.0 and vad 2.0.0
    kws_1 = ArtifactFactory.create(version="1.0.0")
    vad = ArtifactFactory.create(model=ModelFactory.create(name="vad"), version="2.0.0")
    device_desired_set(
        device=device,
        assignments=[ModelAssignment(artifact=kws_1), ModelAssignment(artifact=vad)],
    )

    # when a rollout moves only kws on
    kws_2 = ArtifactFactory.create(version="1.1.0", release_counter=2)
    row = device_desired_set(
        device=device, assignments=[ModelAssignment(artifact=kws_2, rollout_id="r-7", arm="B")]
    )

    # then vad stays as it was and kws has one entry, the new one
    assert _models(row) == {"kws": ("1.1.0", "r-7"), "vad": ("2.0.0", None)}
    assert [m["name"] for m in row.payload["models"]] == ["kws", "vad"]


def test_seq_starts_above_what_the_device_last_accepted(device):
    # given a device that reports seq 41 (say the database was restored from a backup)
    Device.objects.filter(pk=device.pk).update(reported_seq=41)

    row = device_desired_set(device=device, assignments=[])

    assert row.seq == 42


def test_republish_resets_published_seq_only(device):
    # given an envelope the bridge has published
    row = device_desired_set(
        device=device, assignments=[ModelAssignment(artifact=ArtifactFactory.create())]
    )
    DesiredState.objects.filter(pk=row.pk).update(published_seq=row.seq)

    # when it is republished
    device_desired_republish(device=device)

    # then the bridge sees it as unpublished, with the same seq and envelope
    after = DesiredState.objects.get(pk=row.pk)
    assert after.published_seq == 0
    assert (after.seq, bytes(after.envelope), after.payload) == (
        row.seq,
        bytes(row.envelope),
        row.payload,
    )


def test_republish_and_reissue_need_a_desired_state(device):
    with pytest.raises(ServiceError) as republished:
        device_desired_republish(device=device)
    with pytest.raises(ServiceError) as reissued:
        device_desired_reissue(device=device)

    assert republished.value.code == reissued.value.code == ErrorCode.NOT_FOUND
    assert not DesiredState.objects.filter(device=device, seq__gt=0).exists()
