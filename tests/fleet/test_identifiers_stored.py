"""Rows from before the identifier rules: the admin refuses new ones, manage.py
identifiers_check lists the old ones and changes nothing."""

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from fleet.models import Device, DynamicGroup, Group, Tag
from ota.models import Artifact


@pytest.fixture
def admin(db):
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw-long-123456"))
    return client


# (Django's admin form strips surrounding whitespace before the validator sees it.)
@pytest.mark.parametrize("name", ["a/b", "../x", "<script>", "can ary", "x" * 65, "ü"])
def test_the_admin_refuses_a_group_name_outside_the_alphabet(admin, name):
    response = admin.post("/admin/fleet/group/add/", {"name": name, "description": ""})
    assert response.status_code == 200  # the form again, with the error
    assert "not a valid group name" in response.content.decode()
    assert not Group.objects.exists()
    assert admin.post("/admin/fleet/group/add/", {"name": "canary"}).status_code == 302
    assert Group.objects.filter(name="canary").exists()


def test_the_admin_refuses_a_dynamic_group_with_a_bad_tag(admin):
    response = admin.post(
        "/admin/fleet/dynamicgroup/add/",
        {"name": "cams", "description": "", "hardware": "[]", "tags": '["a/b"]'},
    )
    assert response.status_code == 200
    assert "not a valid tag name" in response.content.decode()
    assert not DynamicGroup.objects.exists()


def test_identifiers_check_lists_old_rows_and_changes_nothing(db, kws, capsys):
    Group.objects.create(name="a/b")
    Tag.objects.create(name="<b>")
    Device.objects.create(device_id="dev-1", hardware="Jetson.Orin")
    DynamicGroup.objects.create(name="ok", tags=["fine", "not fine"])
    with pytest.raises(CommandError, match="4 stored identifier"):
        call_command("identifiers_check")
    out = capsys.readouterr().out
    for line in (
        "fleet_group pk=",
        "name='a/b'",
        "fleet_tag pk=",
        "name='<b>'",
        "fleet_device pk=",
        "hardware='Jetson.Orin'",
        "fleet_dynamicgroup pk=",
        "tags='not fine'",
    ):
        assert line in out
    assert Group.objects.filter(name="a/b").exists()
    assert Device.objects.get(device_id="dev-1").hardware == "Jetson.Orin"


def test_identifiers_check_passes_a_clean_database(db, kws, capsys):
    Device.objects.create(device_id="dev-1", hardware="linux-x86_64-fp32")
    assert not Artifact.objects.exists()
    call_command("identifiers_check")
    assert "Every stored identifier follows its rule" in capsys.readouterr().out
