"""The admin's landing page is the fleet overview: devices by liveness, hardware and
installed version (inline SVG bars), the last day's update failures by error code, and
the rollouts in progress with their progress bars; figures match the database."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rollout_helpers import HW2, artifact, devices, phased, use_own_director_key, user

from fleet.models import Device, DeviceEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _card(html: str, name: str) -> int:
    match = re.search(rf'id="dash-{name}"><strong>(\d+)</strong>', html)
    assert match, name
    return int(match[1])


def test_overview_figures_match_the_database():
    now = timezone.now()
    artifact("2.0.0")
    fleet = devices(5)
    esp = devices(2, hardware=HW2, prefix="esp")
    Device.objects.filter(pk__in=[d.pk for d in fleet[:2]]).update(online=True, last_seen_at=now)
    Device.objects.filter(pk=fleet[2].pk).update(last_seen_at=now - timedelta(hours=1))
    Device.objects.filter(pk=fleet[3].pk).update(last_seen_at=now - timedelta(days=3))
    Device.objects.filter(pk=esp[0].pk).update(revoked_at=now)
    Device.objects.filter(pk__in=[d.pk for d in fleet[:3]]).update(
        reported={"models": [{"name": "kws", "version": "1.0.0"}]}
    )
    for i, (code, age) in enumerate(
        [
            ("hash_mismatch", 1),
            ("hash_mismatch", 2),
            ("health_check_failed", 3),
            ("hash_mismatch", 30),
        ]
    ):
        DeviceEvent.objects.create(
            device=fleet[i], seq=i + 1, phase="failed", code=code, ts=now, model="kws"
        )
        DeviceEvent.objects.filter(device=fleet[i], seq=i + 1).update(
            received_at=now - timedelta(hours=age)
        )
    DeviceEvent.objects.create(device=fleet[4], seq=9, phase="committed", ts=now, model="kws")
    rollout = phased(selection={"hardware": ["linux-x86_64-fp32"]})
    client = Client()
    client.force_login(
        user("watch", "fleet.view_device", "fleet.view_deviceevent", "ota.view_rollout", staff=True)
    )

    page = client.get("/admin/")

    assert page.status_code == 200
    html = page.content.decode()
    # 6 enabled devices: 2 online, 1 offline seen an hour ago, 3 stale (3 days, never x2).
    assert (_card(html, "total"), _card(html, "online")) == (6, 2)
    assert (_card(html, "offline"), _card(html, "stale")) == (1, 3)
    assert '<svg class="dash-chart"' in html
    assert "<title>linux-x86_64-fp32: 5</title>" in html
    assert f"<title>{HW2}: 1</title>" in html
    assert "<title>kws 1.0.0: 3</title>" in html
    assert "<title>nothing reported: 3</title>" in html
    assert "<title>hash_mismatch: 2</title>" in html
    assert "<title>health_check_failed: 1</title>" in html
    assert "<title>hash_mismatch: 3</title>" not in html  # one is older than a day
    link = re.search(r'href="(/admin/fleet/deviceevent/\?[^"]*code=hash_mismatch)"', html)
    assert link
    assert "received_at__gte=" in link[1]
    events = client.get(link[1].replace("&amp;", "&"))
    assert events.status_code == 200  # the link filters (no "?e=1" refusal)
    # the last day's only: the 30-hour-old one is not listed
    assert events.content.decode().count('class="field-code">hash_mismatch') == 2
    hw = client.get("/admin/fleet/device/?hardware__exact=linux-x86_64-fp32")
    assert hw.status_code == 200
    assert "/admin/fleet/device/?hardware__exact=linux-x86_64-fp32" in html
    assert f"/admin/ota/rollout/{rollout.pk}/change/" in html
    assert 'data-state="pending" data-count="5"' in html
    assert "cdn" not in html.lower()
    assert not re.search(r'(src|href)="https?://', html)  # every asset served by the project


def test_overview_without_device_permission_keeps_the_app_list():
    devices(2)
    client = Client()
    client.force_login(user("tokens", "fleet.view_apitoken", staff=True))

    html = client.get("/admin/").content.decode()

    assert 'id="dash-total"' not in html
    assert "Api tokens" in html or "API tokens" in html.replace("Api", "API")


def test_overview_needs_a_login():
    response = Client().get("/admin/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_overview_with_an_empty_fleet():
    client = Client()
    client.force_login(User.objects.create_superuser("root", "r@example.org", "x"))
    html = client.get("/admin/").content.decode()
    assert _card(html, "total") == 0
    assert "No update failed in the last 24 hours." in html
    assert "No rollout is running, paused or scheduled." in html


def test_a_hostile_reported_version_is_shown_escaped():
    device = devices(1)[0]
    Device.objects.filter(pk=device.pk).update(
        reported={"models": [{"name": "kws", "version": '<script>alert("x")</script>'}]}
    )
    client = Client()
    client.force_login(User.objects.create_superuser("root", "r@example.org", "x"))

    html = client.get("/admin/").content.decode()

    assert '<script>alert("x")</script>' not in html
    assert "kws &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;: 1" in html
