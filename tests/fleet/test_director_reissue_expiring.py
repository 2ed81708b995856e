"""The beat task re-signs exactly the envelopes about to expire, of devices not revoked."""

from datetime import timedelta

import pytest
from director_factories import HW, ArtifactFactory, own_director_key
from django.utils import timezone

from device_agent.protocol.envelope import verify_desired
from fleet import director
from fleet.director import ModelAssignment, desired_reissue_expiring, device_desired_set
from fleet.keys import director_public_pem
from fleet.models import DesiredState, Device
from fleet.tasks import desired_reissue_expiring_task
from ota.models import Artifact

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    own_director_key(settings, tmp_path)
    settings.FLEET_DESIRED_TTL = timedelta(days=6)


def _issued(device_id: str, days_ago: float, monkeypatch) -> Device:
    """A device whose desired state (kws 1.0.0) was signed `days_ago`."""
    device = Device.objects.create(device_id=device_id, hardware=HW)
    artifact = Artifact.objects.filter(version="1.0.0").first() or ArtifactFactory.create()
    then = timezone.now() - timedelta(days=days_ago)
    with monkeypatch.context() as m:
        m.setattr(director.timezone, "now", lambda: then)
        device_desired_set(device=device, assignments=[ModelAssignment(artifact=artifact)])
    return device


def _seqs() -> dict[str, int]:
    return dict(DesiredState.objects.values_list("device__device_id", "seq"))


def test_only_envelopes_expiring_within_the_window_are_reissued(monkeypatch):
    # given a TTL of 6 days (window: a third, 2 days) and envelopes of various ages
    _issued("fresh", 0, monkeypatch)  # expires in 6 days
    _issued("middle", 3.9, monkeypatch)  # in 2.1 days: not yet
    due = _issued("due", 4.5, monkeypatch)  # in 1.5 days
    _issued("expired", 8, monkeypatch)  # 2 days ago: still re-signed
    revoked = _issued("revoked", 5, monkeypatch)
    Device.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    Device.objects.create(device_id="never", hardware=HW)  # no desired state at all
    before = _seqs()

    # when the beat task runs
    count = desired_reissue_expiring_task()

    # then exactly the due and the expired ones got a fresh envelope
    assert count == 2
    after = _seqs()
    changed = {d for d in after if after[d] != before[d]}
    assert changed == {"due", "expired"}
    assert after["due"] == before["due"] + 1
    row = DesiredState.objects.get(device=due)
    desired = verify_desired(bytes(row.envelope), director_public_pem())
    assert desired.expires_at - timezone.now() > timedelta(days=5)
    assert [m.name for m in desired.models] == ["kws"]


def test_running_again_reissues_nothing(monkeypatch):
    for i in range(5):
        _issued(f"dev-{i}", 5, monkeypatch)

    assert desired_reissue_expiring(within=timedelta(days=2), batch_size=2) == 5
    assert desired_reissue_expiring(within=timedelta(days=2), batch_size=2) == 0


def test_a_window_longer_than_the_ttl_still_ends(monkeypatch):
    for i in range(3):
        _issued(f"dev-{i}", 0, monkeypatch)

    assert desired_reissue_expiring(within=timedelta(days=30), batch_size=1) == 3


def test_a_changed_ttl_does_not_hide_old_envelopes(settings, monkeypatch):
    # given an envelope signed a day ago under a 1-day TTL, which expires now
    settings.FLEET_DESIRED_TTL = timedelta(days=1)
    _issued("old-ttl", 1, monkeypatch)

    # when the TTL is raised to 30 days (window 10 days)
    settings.FLEET_DESIRED_TTL = timedelta(days=30)

    # then the envelope's own expiry counts, not issued_at + the new TTL
    assert desired_reissue_expiring() == 1
