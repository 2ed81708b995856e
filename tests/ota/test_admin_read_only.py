"""The admin lets operators edit only what is legitimately edited there: no hand-typed
device events, no Save buttons on records the services own, no empty History link; the
devices list shows what each device runs."""

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rollout_helpers import artifact, devices, phased, use_own_director_key

from fleet.models import Device, DeviceEvent
from ota.models import Model, RolloutDevice

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


@pytest.fixture
def boss() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("boss", "boss@example.org", "x"))
    return client


def test_device_events_cannot_be_typed_in(boss: Client) -> None:
    device = devices(1)[0]
    event = DeviceEvent.objects.create(
        device=device, seq=1, phase="failed", code="hash_mismatch", ts=timezone.now()
    )

    assert boss.get("/admin/fleet/deviceevent/add/").status_code == 403
    listing = boss.get("/admin/fleet/deviceevent/").content.decode()
    assert "/admin/fleet/deviceevent/add/" not in listing
    page = boss.get(f"/admin/fleet/deviceevent/{event.pk}/change/")
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    posted = boss.post(f"/admin/fleet/deviceevent/{event.pk}/change/", {"phase": "committed"})
    assert posted.status_code == 403
    assert DeviceEvent.objects.get(pk=event.pk).phase == "failed"
    assert boss.get(f"/admin/fleet/deviceevent/{event.pk}/delete/").status_code == 403


def test_read_only_records_have_no_save_button_nor_history(boss: Client) -> None:
    variant = artifact("2.0.0")
    devices(1)
    rollout = phased()
    row = RolloutDevice.objects.get(rollout=rollout)
    pages = [
        f"/admin/ota/model/{Model.objects.get(name='kws').pk}/change/",
        f"/admin/ota/artifact/{variant.pk}/change/",
        f"/admin/ota/rolloutdevice/{row.pk}/change/",
        f"/admin/ota/rollout/{rollout.pk}/change/",
        f"/admin/fleet/device/{row.device_id}/change/",
    ]
    for url in pages:
        page = boss.get(url)
        assert page.status_code == 200, url
        html = page.content.decode()
        assert "historylink" not in html, url
        if "/fleet/device/" not in url:  # tags and groups are edited there
            assert 'name="_save"' not in html, url


def test_devices_list_and_page_show_installed_versions(boss: Client) -> None:
    first, second, third = devices(3)
    Device.objects.filter(pk=first.pk).update(
        reported={"models": [{"name": "kws", "version": "2.0.0", "slot": "a"}]}
    )
    Device.objects.filter(pk=second.pk).update(reported={"models": [{"name": 3}, "junk"]})
    Device.objects.filter(pk=third.pk).update(reported=["hostile"])

    listing = boss.get("/admin/fleet/device/")

    assert listing.status_code == 200
    html = listing.content.decode()
    assert "installed models" in html.lower()
    assert "kws 2.0.0" in html
    page = boss.get(f"/admin/fleet/device/{first.pk}/change/").content.decode()
    assert "kws 2.0.0" in page
    assert not re.search(r'name="reported"', page)
