"""The overview warns of what needs a human: TUF metadata close to expiry, a revoked
release key of a model a live rollout targets, devices stuck in an update; and says
nothing when all is well. The warnings cost the same queries whatever the history."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rollout_helpers import artifact, devices, evaluate, phased, rows, use_own_director_key, user

from ota.models import Model, ReleaseKey, RolloutDevice, TufMetadata

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _client() -> Client:
    client = Client()
    client.force_login(user("op", "fleet.view_device", "ota.view_rollout", staff=True))
    return client


def _warnings(page: str) -> list[tuple[str, str]]:
    return [
        (kind, re.sub(r"<[^>]+>", "", text))
        for kind, text in re.findall(
            r'<li class="dash-warning dash-warning-(\w+)">(.*?)</li>', page, re.S
        )
    ]


def _metadata(role: str, version: int, *, lifetime: timedelta, left: timedelta) -> None:
    now = timezone.now()
    row = TufMetadata.objects.create(role=role, version=version, data=b"{}", expires=now + left)
    TufMetadata.objects.filter(pk=row.pk).update(created_at=now + left - lifetime)


def test_a_quiet_fleet_has_no_warning():
    _metadata("timestamp", 1, lifetime=timedelta(days=1), left=timedelta(hours=23))
    artifact("2.0.0")
    devices(2)
    evaluate(phased())
    page = _client().get("/admin/").content.decode()
    assert 'id="dash-warnings"' not in page


def test_metadata_close_to_expiry_warns_only_for_the_newest_version():
    day = timedelta(days=1)
    _metadata("timestamp", 1, lifetime=day, left=timedelta(hours=1))  # superseded
    _metadata("timestamp", 2, lifetime=day, left=timedelta(hours=20))
    _metadata("snapshot", 4, lifetime=7 * day, left=timedelta(hours=30, minutes=5))
    _metadata("targets", 9, lifetime=365 * day, left=-timedelta(hours=2))

    warnings = _warnings(_client().get("/admin/").content.decode())

    assert [kind for kind, _ in warnings] == ["tuf_expiry", "tuf_expiry"]
    assert "TUF snapshot metadata version 4 expires in 30 hours" in warnings[0][1]
    assert "TUF targets metadata version 9 expired" in warnings[1][1]


def test_a_revoked_key_of_a_model_a_live_rollout_targets_warns():
    artifact("2.0.0")
    artifact("1.0.0", name="other")
    devices(2)
    model = Model.objects.get(name="kws")
    ReleaseKey.objects.create(keyid="c" * 64, public_key={}, model=model)  # trusted: silent
    ReleaseKey.objects.create(keyid="d" * 64, public_key={}, model=model, revoked_at=timezone.now())
    ReleaseKey.objects.create(  # a model no rollout targets: silent
        keyid="e" * 64,
        public_key={},
        model=Model.objects.get(name="other"),
        revoked_at=timezone.now(),
    )
    rollout = phased()

    warnings = _warnings(_client().get("/admin/").content.decode())

    assert len(warnings) == 1
    kind, text = warnings[0]
    assert kind == "revoked_key"
    assert "Release key dddddddddddd… of kws was revoked" in text
    assert f"rollout {rollout.public_id} still targets kws" in text


def test_devices_without_news_for_an_hour_are_stuck():
    artifact("2.0.0")
    devices(3)
    rollout = phased(policy={"device_timeout_minutes": 43200})
    evaluate(rollout)
    notified = rows(rollout)
    assert {r.state for r in notified} == {"notified"}
    old = timezone.now() - timedelta(hours=2)
    RolloutDevice.objects.filter(pk__in=[r.pk for r in notified[:2]]).update(
        notified_at=old, phase_at=None
    )

    warnings = _warnings(_client().get("/admin/").content.decode())

    assert len(warnings) == 1
    kind, text = warnings[0]
    assert kind == "stuck"
    assert (
        f"2 devices of rollout {rollout.public_id} have been notified for more than 60 minutes"
        in text
    )


def test_warnings_cost_the_same_whatever_the_history():
    day = timedelta(days=1)
    _metadata("timestamp", 1, lifetime=day, left=timedelta(hours=1))
    artifact("2.0.0")
    devices(3)
    rollout = phased(policy={"device_timeout_minutes": 43200})
    evaluate(rollout)
    client = _client()
    with CaptureQueriesContext(connection) as first:
        client.get("/admin/")
    for version in range(2, 40):
        _metadata("timestamp", version, lifetime=day, left=timedelta(hours=1))
    RolloutDevice.objects.filter(rollout=rollout).update(
        notified_at=timezone.now() - 2 * day, phase_at=timezone.now() - 2 * day
    )
    with CaptureQueriesContext(connection) as second:
        page = client.get("/admin/").content.decode()
    assert len(_warnings(page)) == 2
    assert len(second.captured_queries) == len(first.captured_queries)
