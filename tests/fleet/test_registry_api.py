"""Device listing, filters, cursor pagination, labels and groups through the REST API."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from fleet.models import Device, DynamicGroup, Group
from fleet.registry import device_labels_set


@pytest.fixture
def staff(db):
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw-long-123456"))
    return client


@pytest.fixture
def fleet(db):
    Device.objects.bulk_create(
        [
            Device(device_id=f"pi-{i:04d}", hardware="linux-aarch64-fp32", online=i % 2 == 0)
            for i in range(250)
        ]
        + [Device(device_id=f"esp-{i:04d}", hardware="esp32s3-int8") for i in range(30)]
    )
    device_labels_set(device=Device.objects.get(device_id="pi-0001"), tags=["cam", "berlin"])
    device_labels_set(device=Device.objects.get(device_id="pi-0002"), tags=["cam"])


def test_cursor_pagination_walks_every_device_once(staff, fleet):
    seen: list[str] = []
    url = "/api/v1/devices/?page_size=100"
    while url:
        page = staff.get(url).json()
        seen += [d["device_id"] for d in page["results"]]
        url = page["next"]
    assert len(seen) == 280
    assert seen == sorted(seen)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("hardware=esp32s3-int8", 30),
        ("tag=cam", 2),
        ("tag=cam&tag=berlin", 1),
        ("online=true", 125),
        ("q=esp-002", 10),
        ("revoked=false", 280),
    ],
)
def test_filters(staff, fleet, query, expected):
    results = staff.get(f"/api/v1/devices/?page_size=1000&{query}").json()["results"]
    assert len(results) == expected


def test_bad_boolean_filter_is_malformed(staff, fleet):
    response = staff.get("/api/v1/devices/?online=maybe")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed"


def test_static_and_dynamic_groups(staff, fleet):
    assert (
        staff.post(
            "/api/v1/groups/", {"name": "canary"}, content_type="application/json"
        ).status_code
        == 201
    )
    members = staff.post(
        "/api/v1/groups/canary/members",
        {"add": ["pi-0001", "esp-0001"]},
        content_type="application/json",
    )
    assert members.json()["devices"] == 2
    listed = staff.get("/api/v1/devices/?group=canary").json()["results"]
    assert {d["device_id"] for d in listed} == {"pi-0001", "esp-0001"}
    missing = staff.post(
        "/api/v1/groups/canary/members", {"add": ["nope"]}, content_type="application/json"
    )
    assert missing.status_code == 404
    assert Group.objects.get(name="canary").devices.count() == 2

    assert (
        staff.post(
            "/api/v1/dynamic-groups/",
            {"name": "cams", "hardware": ["linux-aarch64-fp32"], "tags": ["cam"]},
            content_type="application/json",
        ).status_code
        == 201
    )
    assert DynamicGroup.objects.filter(name="cams").exists()
    selected = staff.get("/api/v1/dynamic-groups/cams/devices").json()["results"]
    assert [d["device_id"] for d in selected] == ["pi-0001", "pi-0002"]


def test_patch_labels(staff, fleet):
    response = staff.patch(
        "/api/v1/devices/esp-0003/", {"tags": ["lab"]}, content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json()["tags"] == ["lab"]
    bad = staff.patch(
        "/api/v1/devices/esp-0003/", {"tags": ["../x"]}, content_type="application/json"
    )
    assert bad.status_code == 400


def test_reads_need_authentication(fleet):
    response = Client().get("/api/v1/devices/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
