"""The device page (installed models, desired versus reported, history, rollouts,
certificates, revocation with a reason, tags and groups), the devices list's failing
filter and the model page (versions x hardware, devices per version, release keys): each
shows what the database holds, in a number of queries that does not grow with it."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rollout_helpers import (
    HW,
    HW2,
    artifact,
    devices,
    evaluate,
    phased,
    report,
    rows,
    use_own_director_key,
    user,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase
from fleet.models import AuditEvent, Device, DeviceCertificate, DeviceEvent, Group, Tag
from ota.models import Model, ReleaseKey

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _client(*perms: str) -> Client:
    client = Client()
    client.force_login(
        user("op", "fleet.view_device", "ota.view_rollout", "ota.view_model", *perms, staff=True)
    )
    return client


def _count(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


def _device_with_history() -> Device:
    artifact("1.0.0")
    artifact("2.0.0")
    (device,) = devices(1)
    Device.objects.filter(pk=device.pk).update(
        online=True,
        last_seen_at=timezone.now(),
        reported={
            "models": [
                {
                    "name": "kws",
                    "version": "1.0.0",
                    "slot": "b",
                    "status": "committed",
                    "release_counter": 100,
                }
            ]
        },
    )
    DeviceCertificate.objects.create(
        serial="0abc", device=device, not_after=timezone.now() + timedelta(days=300)
    )
    rollout = phased()
    evaluate(rollout)
    report(device, rollout, Phase.DOWNLOADING)
    report(device, rollout, Phase.FAILED, code=ErrorCode.HASH_MISMATCH)
    return Device.objects.get(pk=device.pk)


def test_device_page_shows_what_it_runs_and_what_happened():
    device = _device_with_history()
    committed_at = timezone.now().replace(microsecond=0) - timedelta(days=3)
    DeviceEvent.objects.create(
        device=device, seq=0, model="kws", phase="committed", ts=committed_at, digest="old"
    )
    page = _client().get(f"/admin/fleet/device/{device.pk}/change/").content.decode()

    installed = re.search(r'<tr data-model="kws">(.*?)</tr>', page, re.S)
    assert installed is not None
    cells = re.findall(r"<td>(.*?)</td>", installed[1], re.S)
    assert cells[:5] == ["kws", "1.0.0", "b", "committed", "100"]
    assert committed_at.isoformat() in cells[5]
    assert cells[6] == "2.0.0"  # the rollout asks for 2.0.0: desired differs from reported
    assert "updating" in installed[1]
    assert "Runs kws 1.0.0." in page

    history = re.findall(r'<li class="[^"]*" data-phase="(\w+)"', page)
    assert history == [
        e.phase for e in DeviceEvent.objects.filter(device=device).order_by("-received_at", "-pk")
    ]
    assert '<span class="dash-code">hash_mismatch</span>' in page
    assert 'class="dash-event-failed" data-phase="failed"' in page
    (row,) = rows(device.rollout_devices.get().rollout)
    assert f'href="/admin/ota/rollout/{row.rollout_id}/change/"' in page
    assert "0abc" in page
    assert '<span class="dash-badge dash-badge-completed">online</span>' in page
    assert 'name="tags"' not in page  # no change permission: no form
    assert "Revoke device" not in page


def test_device_page_costs_the_same_whatever_its_history():
    device = _device_with_history()
    client = _client("fleet.change_device")
    before = _count(client, f"/admin/fleet/device/{device.pk}/change/")
    DeviceEvent.objects.bulk_create(
        DeviceEvent(
            device=device,
            seq=i,
            model="kws",
            phase="failed",
            code="x",
            ts=timezone.now(),
            digest=f"d{i}",
        )
        for i in range(200)
    )
    for i in range(5):
        Tag.objects.create(name=f"t{i}").devices.add(device)
        Group.objects.create(name=f"g{i}").devices.add(device)
    after = _count(client, f"/admin/fleet/device/{device.pk}/change/")
    assert after == before
    assert after <= 20


def test_revoking_asks_a_reason_and_audits_it():
    device = _device_with_history()
    viewer = _client()
    assert (
        viewer.post(f"/admin/fleet/device/{device.pk}/revoke/", {"reason": "x"}).status_code == 403
    )
    client = _client("fleet.change_device")
    page = client.get(f"/admin/fleet/device/{device.pk}/change/").content.decode()
    assert "Revoke device" in page
    assert 'name="reason" required' in page

    client.post(f"/admin/fleet/device/{device.pk}/revoke/", {"reason": "  "})
    assert Device.objects.get(pk=device.pk).revoked_at is None

    client.post(f"/admin/fleet/device/{device.pk}/revoke/", {"reason": "stolen from the van"})
    assert Device.objects.get(pk=device.pk).revoked_at is not None
    assert DeviceCertificate.objects.get(device=device).revoked_at is not None
    audit = AuditEvent.objects.get(action="device.revoke")
    assert (audit.actor_name, audit.reason, audit.target) == (
        "op",
        "stolen from the van",
        f"device {device.device_id}",
    )
    page = client.get(f"/admin/fleet/device/{device.pk}/change/").content.decode()
    assert "revoked" in page
    assert "Revoke device" not in page


def test_tags_and_groups_are_edited_as_names():
    (device,) = devices(1)
    Group.objects.create(name="canary")
    client = _client("fleet.change_device")
    url = f"/admin/fleet/device/{device.pk}/labels/"

    client.post(url, {"tags": "lab, cold-room", "groups": "canary"})
    assert sorted(device.tags.values_list("name", flat=True)) == ["cold-room", "lab"]
    assert list(device.groups.values_list("name", flat=True)) == ["canary"]

    refused = client.post(url, {"tags": "lab", "groups": "nobody"}, follow=True)
    assert "no group nobody" in refused.content.decode()
    assert sorted(device.tags.values_list("name", flat=True)) == ["cold-room", "lab"]
    bad = client.post(url, {"tags": "bad tag!", "groups": ""}, follow=True)
    assert "tags" in bad.content.decode()
    assert sorted(device.tags.values_list("name", flat=True)) == ["cold-room", "lab"]

    client.post(url, {"tags": "", "groups": ""})
    assert not device.tags.exists()
    assert not device.groups.exists()


def test_devices_list_filters_the_failing_and_searches_by_id():
    artifact("2.0.0")
    fleet = devices(4)
    rollout = phased()
    evaluate(rollout)
    report(fleet[1], rollout, Phase.FAILED, code=ErrorCode.HASH_MISMATCH)
    evaluate(rollout)
    DeviceEvent.objects.create(
        device=fleet[2], seq=9, phase="rejected", code="x", ts=timezone.now(), digest="z"
    )
    client = _client()

    def listed(query: str) -> list[str]:
        page = client.get(f"/admin/fleet/device/?{query}").content.decode()
        return re.findall(r'<a href="/admin/fleet/device/\d+/change/[^"]*">(dev-\d+)</a>', page)

    assert listed("failing=rollout") == ["dev-00001"]
    assert listed("failing=day") == ["dev-00001", "dev-00002"]
    assert listed("q=dev-00003") == ["dev-00003"]
    assert len(listed("")) == 4


def _model_fleet() -> Model:
    artifact("1.0.0")
    artifact("2.0.0")
    artifact("2.0.0", hardware=HW2)
    fleet = devices(3)
    for device, version in zip(fleet, ["1.0.0", "1.0.0", "2.0.0"], strict=True):
        Device.objects.filter(pk=device.pk).update(
            reported={"models": [{"name": "kws", "version": version}]}
        )
    model = Model.objects.get(name="kws")
    ReleaseKey.objects.create(keyid="a" * 64, public_key={}, model=model)
    ReleaseKey.objects.create(
        keyid="b" * 64,
        public_key={},
        model=model,
        revoked_at=timezone.now(),
        revoked_reason="laptop lost",
    )
    return model


def test_model_page_shows_versions_by_hardware_devices_and_keys():
    model = _model_fleet()
    page = _client().get(f"/admin/ota/model/{model.pk}/change/").content.decode()

    running = dict(
        re.findall(r'<tr data-version="([^"]+)">.*?<td class="dash-devices">(\d+)</td>', page, re.S)
    )
    assert running == {"2.0.0": "1", "1.0.0": "2"}
    assert page.index('data-version="2.0.0"') < page.index('data-version="1.0.0"')  # newest first
    header = re.search(r"<thead><tr><th>Version</th>(.*?)</tr>", page)
    assert header is not None
    assert f"<th>{HW}</th>" in header[1]
    assert f"<th>{HW2}</th>" in header[1]
    two = re.search(r'<tr data-version="2.0.0">(.*?)</tr>', page, re.S)
    assert two is not None
    assert two[1].count('class="dash-variant"') == 2
    one = re.search(r'<tr data-version="1.0.0">(.*?)</tr>', page, re.S)
    assert one is not None
    assert one[1].count('class="dash-variant"') == 1
    assert "by ci" in two[1]
    assert "laptop lost" in page
    assert page.count("dash-verdict-breach") == 1  # one revoked key
    assert page.count(">trusted<") == 1
    assert "Save" not in page


def test_model_page_costs_the_same_whatever_the_size():
    model = _model_fleet()
    client = _client()
    before = _count(client, f"/admin/ota/model/{model.pk}/change/")
    for i in range(3, 9):
        artifact(f"3.{i}.0")
        artifact(f"3.{i}.0", hardware=HW2)
    more = devices(50, prefix="more")
    Device.objects.filter(pk__in=[d.pk for d in more]).update(
        reported={"models": [{"name": "kws", "version": "3.3.0"}]}
    )
    assert _count(client, f"/admin/ota/model/{model.pk}/change/") == before
    assert before <= 12


def test_devices_list_costs_the_same_whatever_the_fleet():
    artifact("2.0.0")
    devices(3)
    evaluate(phased())
    client = _client()
    urls = [
        "/admin/fleet/device/",
        "/admin/fleet/device/?failing=rollout",
        "/admin/fleet/device/?failing=day&q=dev",
    ]
    before = [_count(client, url) for url in urls]
    more = devices(150, prefix="more")
    Device.objects.filter(pk__in=[d.pk for d in more]).update(
        reported={"models": [{"name": "kws", "version": "2.0.0"}]}, online=True
    )
    DeviceEvent.objects.bulk_create(
        DeviceEvent(device=d, seq=1, phase="failed", code="x", ts=timezone.now(), digest="f")
        for d in more
    )
    assert [_count(client, url) for url in urls] == before
    assert max(before) <= 12


def test_device_page_draws_a_sparkline_per_model_metric():
    from telemetry.models import Sample

    (device,) = devices(1)
    client = _client()
    url = f"/admin/fleet/device/{device.pk}/change/"
    assert "No telemetry from this device yet." in client.get(url).content.decode()
    before = _count(client, url)
    now = timezone.now()
    Sample.objects.bulk_create(
        [
            Sample(
                device=device,
                ts=now - timedelta(seconds=60 - i),
                model="kws",
                version="1.0.0",
                metric="latency_ms",
                value=float(i),
            )
            for i in range(40)
        ]
        + [
            Sample(
                device=device,
                ts=now - timedelta(seconds=60 - i),
                model="kws",
                version="1.0.0",
                metric="confidence",
                value=0.5,
            )
            for i in range(10)
        ]
    )

    page = client.get(url).content.decode()

    latency = re.search(r'<tr data-metric="latency_ms">(.*?)</tr>', page, re.S)
    assert latency is not None
    cells = re.findall(r"<td>(.*?)</td>", latency[1], re.S)
    assert cells[:3] == ["kws", "1.0.0", "latency_ms"]
    assert cells[4:] == ["39", "0 to 39", "40"]  # last, range, samples: newest last
    points = re.search(r'points="([^"]+)"', latency[1])
    assert points is not None
    assert len(points[1].split()) == 40
    assert '<tr data-metric="confidence">' in page
    assert _count(client, url) == before
