"""The detail pages' plain rows: the rollout page's counts give the same figures as the
queries they replace, and the navigation sidebar the detail pages write themselves is the
admin's own markup."""

import re

import pytest
from django.db.models import Count
from django.template import Context
from django.template.loader import render_to_string
from django.test import Client, RequestFactory
from rollout_helpers import (
    ab,
    artifact,
    devices,
    evaluate,
    phased,
    report,
    use_own_director_key,
    user,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase
from fleet.models import Device, DeviceCertificate, Group, Tag
from ota import rollout_dashboard as dash
from ota.models import RolloutDevice
from ota.templatetags.ota_dashboard import nav_sidebar

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def test_counts_give_what_the_queries_they_replace_give():
    artifact("1.0.0")
    artifact("2.0.0")
    devices(12)
    rollout = ab(
        arms=[
            {"name": "a", "version": "1.0.0", "baseline": True},
            {"name": "b", "version": "2.0.0"},
        ]
    )
    evaluate(rollout)
    touched = list(RolloutDevice.objects.filter(rollout=rollout).exclude(state="pending"))
    assert len(touched) >= 4
    report(touched[0].device, rollout, Phase.DOWNLOADING)
    report(touched[1].device, rollout, Phase.STAGED)
    report(touched[2].device, rollout, Phase.FAILED, code=ErrorCode.HASH_MISMATCH)
    report(touched[3].device, rollout, Phase.FAILED)
    evaluate(rollout)
    counts = dash.DeviceCounts.of(rollout)

    assert counts.arms(rollout) == dash.arm_progress(rollout)
    failed = (
        RolloutDevice.objects.filter(rollout=rollout, state__in=dash.FAILURE_STATES)
        .values_list("last_code", "arm")
        .annotate(n=Count("pk"))
    )
    assert sorted(counts.failures()) == sorted((c or "unknown", a, n) for c, a, n in failed)
    assert counts.failures()  # the comparison above compares something
    codes = ["", "unknown", "hash_mismatch", "nope"]
    arms = ["", "a", "b", "nope"]
    for state in ["", *(value for value, _ in dash.DISPLAY_STATES)]:
        for code in codes:
            for arm in arms:
                filters = {"state": state, "arm": arm, "code": code}
                expected = dash.devices_page_queryset(rollout, **filters).count()
                assert counts.matching(**filters) == expected, filters


def test_device_rows_page_like_the_queryset():
    artifact("2.0.0")
    rollout = phased(selection={"devices": [d.device_id for d in devices(7)]})
    evaluate(rollout)
    rows = dash.DeviceRows(rollout, dash.DeviceCounts.of(rollout))
    assert len(rows) == rows.count() == 7
    expected = list(dash.devices_page_queryset(rollout).values_list(*dash.DEVICE_ROW_COLUMNS))
    assert rows[2:5] == expected[2:5]
    assert rows[0] == expected[0]


def test_nav_sidebar_is_the_admins_own_markup():
    from django.contrib import admin

    def squeeze(html: str) -> str:
        return re.sub(r">\s+<", "><", re.sub(r"\s+", " ", html)).strip()

    for who in (
        user("some", "fleet.view_device", "ota.view_rollout", "ota.add_rollout", staff=True),
        user("none", staff=True),
    ):
        request = RequestFactory().get("/admin/ota/rollout/3/change/")
        request.user = who
        context = admin.site.each_context(request)
        theirs = render_to_string("admin/nav_sidebar.html", context, request)
        assert squeeze(nav_sidebar(Context({**context, "request": request}))) == squeeze(theirs)
    assert 'aria-current="page"' in theirs or "permission" in theirs


def test_device_page_rows_escape_and_show_every_field():
    from django.utils import timezone

    (device,) = devices(1)
    now = timezone.now()
    DeviceCertificate.objects.create(serial="0a<b", device=device, not_after=now, revoked_at=now)
    Tag.objects.create(name="lab").devices.add(device)
    Group.objects.create(name="canary").devices.add(device)
    client = Client()
    client.force_login(user("op", "fleet.view_device", staff=True))
    page = client.get(f"/admin/fleet/device/{device.pk}/change/").content.decode()
    assert "<code>0a&lt;b</code>" in page
    assert page.count('<time class="dash-time"') >= 3  # issued, valid until, revoked
    assert "Tags: lab. Groups: canary." in page
    assert "No rollout has targeted it." in page
    assert "No update event yet." in page
    assert 'id="nav-sidebar"' in page
    assert "dash-tag-choices" not in page  # no form, no names offered

    Tag.objects.create(name="cold-room")
    editor = Client()
    editor.force_login(user("ed", "fleet.view_device", "fleet.change_device", staff=True))
    page = editor.get(f"/admin/fleet/device/{device.pk}/change/").content.decode()
    tags = re.search(r'<datalist id="dash-tag-choices">(.*?)</datalist>', page)
    groups = re.search(r'<datalist id="dash-group-choices">(.*?)</datalist>', page)
    assert tags is not None
    assert groups is not None
    assert tags[1] == '<option value="cold-room"><option value="lab">'
    assert groups[1] == '<option value="canary">'
    assert 'name="tags" value="lab"' in page
    assert Device.objects.count() == 1
