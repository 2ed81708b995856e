"""The dashboard's pages answer in a number of queries that does not grow with the fleet:
more devices, events and rollouts cost the same number of queries."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rollout_helpers import artifact, devices, evaluate, phased, rows, use_own_director_key, user
from service_check import require_postgresql

from fleet.models import Device, DeviceEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


def _client() -> Client:
    client = Client()
    client.force_login(
        user("q", "ota.view_rollout", "fleet.view_device", "ota.control_rollout", staff=True)
    )
    return client


def _grow(prefix: str, n: int) -> None:
    fleet = devices(n, prefix=prefix)
    Device.objects.filter(pk__in=[d.pk for d in fleet]).update(
        reported={"models": [{"name": "kws", "version": "1.0.0"}]}
    )
    DeviceEvent.objects.bulk_create(
        DeviceEvent(device=d, seq=1, phase="failed", code=f"code_{i % 3}", ts=timezone.now())
        for i, d in enumerate(fleet)
    )


def test_rollout_page_and_fragment_cost_the_same_whatever_the_size():
    artifact("2.0.0")
    _grow("a", 5)
    small = phased(selection={"devices": [f"a-{i:05d}" for i in range(5)]})
    evaluate(small)
    _grow("b", 80)
    big = phased(selection={"devices": [f"b-{i:05d}" for i in range(80)]})
    evaluate(big, at=timezone.now() + timedelta(minutes=5))
    assert len(rows(big)) == 80
    client = _client()

    for suffix in (
        "change/",
        "progress/",
        "progress/?part=devices&page=2",
        "change/?page=2",
        "change/?state=notified&code=x",
    ):
        counts = [_queries(client, f"/admin/ota/rollout/{r.pk}/{suffix}") for r in (small, big)]
        assert counts[0] == counts[1], suffix
        assert counts[1] <= 20, suffix


def test_overview_costs_the_same_whatever_the_size():
    artifact("2.0.0")
    _grow("a", 3)
    phased(selection={"devices": ["a-00000"]})
    client = _client()
    before = _queries(client, "/admin/")

    _grow("b", 60)
    for i in range(1, 3):
        phased(selection={"devices": [f"a-{i:05d}"]})

    after = _queries(client, "/admin/")
    assert after == before
    assert after <= 20


def test_rollouts_list_costs_the_same_whatever_the_number_of_rollouts():
    artifact("2.0.0")
    _grow("a", 6)
    phased(selection={"devices": ["a-00000"]})
    client = _client()
    before = _queries(client, "/admin/ota/rollout/")

    for i in range(1, 6):
        phased(selection={"devices": [f"a-{i:05d}"]})

    page = client.get("/admin/ota/rollout/").content.decode()
    assert page.count("pending 1") == 6
    assert _queries(client, "/admin/ota/rollout/") == before


def test_devices_list_costs_the_same_sorted_and_whatever_the_size():
    _grow("a", 3)
    client = _client()
    urls = ["", "?o=5", "?o=-5.1&q=a-&online__exact=0", "?o=bad", "?o=-3&p=2"]
    before = [_queries(client, f"/admin/fleet/device/{query}") for query in urls]

    _grow("b", 120)

    after = [_queries(client, f"/admin/fleet/device/{query}") for query in urls]
    assert after == before
    assert len(set(after)) == 1
    assert after[0] <= 10


def test_devices_list_checkbox_is_the_admins_own():
    """The list writes its action checkbox directly (ota/device_list.py): same HTML as the
    widget Django renders, so the admin's actions script still finds it."""
    from django.contrib import admin
    from django.contrib.admin import ModelAdmin

    # Not a valid device id: only to see that both escape it alike.
    device = Device.objects.create(device_id='a<b&"c', hardware="linux-x86_64-fp32")
    page = admin.site.get_model_admin(Device)
    assert page.action_checkbox(device) == ModelAdmin.action_checkbox(page, device)
    client = Client()
    # the revoke action needs the change permission: without it, no boxes
    client.force_login(user("editor", "fleet.view_device", "fleet.change_device", staff=True))
    listing = client.get("/admin/fleet/device/").content.decode()
    assert page.action_checkbox(device) in listing


def test_last_days_failures_are_read_through_their_index():
    """The overview's failure chart and the devices list's "failing" filter select the
    events the partial index deviceevent_failure_time holds (same phases)."""
    require_postgresql(connection.vendor)  # PostgreSQL's plans
    from ota import rollout_dashboard as dash

    since = timezone.now() - dash.FAILURE_WINDOW
    failures = DeviceEvent.objects.filter(
        received_at__gte=since, phase__in=list(dash.FAILURE_PHASES)
    ).values_list("code")
    with connection.cursor() as cursor:  # a tiny test table: make the planner show its choice
        cursor.execute("SET LOCAL enable_seqscan = off")
    assert "deviceevent_failure_time" in failures.explain()
