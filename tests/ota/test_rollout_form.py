"""The admin's New rollout form: it creates through the API's own validation and service,
refuses what the API refuses with the API's message, and previews what a selection
targets in a number of queries that does not grow with the fleet."""

import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rollout_helpers import HW, HW2, artifact, devices, use_own_director_key, user

from fleet.models import Group
from ota.models import Rollout, RolloutAuditEvent, RolloutDevice

pytestmark = pytest.mark.django_db
ADD = "/admin/ota/rollout/add/"
PREVIEW = "/admin/ota/rollout/add/preview/"


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _operator(*extra: str) -> Client:
    client = Client()
    client.force_login(
        user(
            "op",
            "ota.view_rollout",
            "ota.add_rollout",
            "ota.control_rollout",
            "fleet.view_device",
            *extra,
            staff=True,
        )
    )
    return client


def _form(**fields: Any) -> dict[str, Any]:
    base = {
        "model": "kws",
        "strategy": "phased",
        "version": "2.0.0",
        "select_groups": "canary",
        "stage_percent_0": "10",
        "stage_bake_0": "30",
        "stage_percent_1": "100",
        "on_breach": "abort",
        "max_failure_rate": "0.02",
        "min_finished": "3",
        "rate_per_minute": "20",
        "window_start": "02:00",
        "window_end": "05:00",
        "window_timezone": "Europe/Paris",
        "window_days": ["mon", "tue"],
        "then": "draft",
        "description": "canary of 2.0.0",
    }
    base.update(fields)
    return base


@pytest.fixture
def fleet() -> None:
    artifact("1.0.0")
    artifact("2.0.0")
    group = Group.objects.create(name="canary")
    group.devices.add(*devices(4), *devices(2, hardware=HW2, prefix="esp"))


def test_the_page_needs_the_apis_create_permission(fleet):
    viewer = Client()
    viewer.force_login(user("viewer", "ota.view_rollout", staff=True))
    assert viewer.get(ADD).status_code == 403
    assert viewer.get(PREVIEW + "?select_all=1").status_code == 403
    assert viewer.post(ADD, _form()).status_code == 403
    assert not Rollout.objects.exists()

    page = _operator().get(ADD)
    assert page.status_code == 200
    text = page.content.decode()
    assert 'name="stage_percent_0"' in text
    assert 'value="start"' not in text  # starting needs ota.start_rollout
    assert 'value="start"' in _operator("ota.start_rollout").get(ADD).content.decode()
    # The list offers the form now.
    assert ADD in _operator().get("/admin/ota/rollout/").content.decode()


def test_a_phased_rollout_is_created_as_typed_and_audited(fleet):
    response = _operator().post(ADD, _form())

    rollout = Rollout.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/ota/rollout/{rollout.pk}/change/"
    assert (rollout.status, rollout.version, rollout.description) == (
        "draft",
        "2.0.0",
        "canary of 2.0.0",
    )
    assert rollout.selection["groups"] == ["canary"]
    assert rollout.stages == [
        {"percent": 10.0, "bake_minutes": 30.0},
        {"percent": 100.0, "bake_minutes": 0.0},
    ]
    policy = rollout.policy
    assert (policy["on_breach"], policy["max_failure_rate"], policy["min_finished"]) == (
        "abort",
        0.02,
        3,
    )
    assert policy["rate_per_minute"] == 20
    assert policy["window"]["days"] == ["mon", "tue"]
    assert policy["window"]["timezone"] == "Europe/Paris"
    audit = RolloutAuditEvent.objects.get(rollout=rollout)
    assert (audit.actor_name, audit.to_status, audit.reason) == ("op", "draft", "created")


def test_start_now_starts_it_with_its_devices(fleet):
    refused = _operator().post(ADD, _form(then="start"))
    assert refused.status_code == 200
    assert refused.context["error"] == (
        "forbidden: starting a rollout needs the ota.start_rollout permission"
    )
    assert not Rollout.objects.exists()

    response = _operator("ota.start_rollout").post(ADD, _form(then="start"))

    assert response.status_code == 302
    rollout = Rollout.objects.get()
    assert rollout.status == "running"
    assert RolloutDevice.objects.filter(rollout=rollout).count() == 6
    assert list(
        RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk").values_list("to_status")
    ) == [("draft",), ("scheduled",), ("running",)]


def test_an_ab_rollout_takes_its_arms_and_baseline(fleet):
    response = _operator().post(
        ADD,
        _form(
            strategy="ab",
            version="",
            arm_name_0="a",
            arm_version_0="1.0.0",
            arm_weight_0="1",
            arm_name_1="b",
            arm_version_1="2.0.0",
            arm_weight_1="3",
            baseline="0",
            promotion_mode="auto",
            promotion_metric="latency_ms",
            promotion_better="lower",
            promotion_min_relative_change="0.05",
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    rollout = Rollout.objects.get()
    assert [(a["name"], a["version"], a["weight"], a["baseline"]) for a in rollout.arms] == [
        ("a", "1.0.0", 1.0, True),
        ("b", "2.0.0", 3.0, False),
    ]
    assert rollout.policy["promotion"]["mode"] == "auto"
    assert rollout.policy["promotion"]["metric"] == "latency_ms"


# Each form mistake, and the API body that makes the same mistake.
REFUSALS = [
    ({"version": "9.9.9"}, {"version": "9.9.9"}),
    ({"stage_percent_1": "50"}, {"stages": [{"percent": 10, "bake_minutes": 30}, {"percent": 50}]}),
    ({"max_failure_rate": "2"}, {"policy": {"max_failure_rate": 2}}),
    ({"max_failure_rate": "lots"}, {"policy": {"max_failure_rate": "lots"}}),
    ({"select_groups": "nobody"}, {"selection": {"groups": ["nobody"]}}),
    ({"select_groups": "", "select_hardware": "toaster"}, {"selection": {"hardware": ["toaster"]}}),
    ({"select_groups": ""}, {"selection": {}}),
    ({"window_start": "25:00"}, {"policy": {"window": {"start": "25:00", "end": "05:00"}}}),
    ({"version": "bad version!"}, {"version": "bad version!"}),
]


@pytest.mark.parametrize(("fields", "api_body"), REFUSALS)
def test_the_form_refuses_what_the_api_refuses_with_its_message(fleet, fields, api_body):
    client = _operator()
    body = {
        "model": "kws",
        "strategy": "phased",
        "version": "2.0.0",
        "selection": {"groups": ["canary"]},
        "stages": [{"percent": 10, "bake_minutes": 30}, {"percent": 100}],
        **api_body,
    }
    api = client.post("/api/v1/rollouts/", json.dumps(body), content_type="application/json")
    assert api.status_code in (400, 404, 422), api.content
    error = api.json()["error"]

    form = client.post(ADD, _form(**fields))

    assert form.status_code == 200
    shown = form.context["error"]
    assert shown == f"{error['code']}: {error['detail']}"
    assert not Rollout.objects.exists()
    # What was typed stays in the form.
    for value in fields.values():
        if value:
            assert f'value="{value}"' in form.content.decode() or value in form.content.decode()


def test_preview_counts_the_targets_and_who_can_take_the_version(fleet):
    client = _operator()
    body = client.get(
        PREVIEW, {"model": "kws", "version": "2.0.0", "select_groups": "canary"}
    ).json()
    assert body["targets"] == 6
    assert {r["hardware"]: r["devices"] for r in body["by_hardware"]} == {HW: 4, HW2: 2}
    assert body["versions"] == [{"version": "2.0.0", "can_take": 4}]
    assert "Targets 6 enabled devices" in body["text"]
    assert "4 of them can take 2.0.0" in body["text"]

    narrowed = client.get(
        PREVIEW, {"model": "kws", "version": "2.0.0", "select_all": "1", "select_hardware": HW2}
    ).json()
    assert (narrowed["targets"], narrowed["versions"][0]["can_take"]) == (2, 0)

    ab = client.get(
        PREVIEW,
        {
            "model": "kws",
            "strategy": "ab",
            "arm_version_0": "1.0.0",
            "arm_version_1": "2.0.0",
            "select_all": "1",
        },
    ).json()
    assert [v["version"] for v in ab["versions"]] == ["1.0.0", "2.0.0"]

    missing = client.get(PREVIEW, {"model": "kws", "select_groups": "nobody"}).json()
    assert missing["error"] == "no group nobody"
    empty = client.get(PREVIEW, {"model": "kws"}).json()
    assert "the selection is empty" in empty["error"]


def _count(client: Client, url: str, params: dict[str, str] | None = None) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url, params or {}).status_code == 200
    return len(captured.captured_queries)


def test_form_and_preview_cost_the_same_whatever_the_size(fleet):
    client = _operator()
    params = {"model": "kws", "version": "2.0.0", "select_groups": "canary", "select_tags": ""}
    before = (_count(client, ADD), _count(client, PREVIEW, params))

    Group.objects.get(name="canary").devices.add(*devices(60, prefix="more"))
    for i in range(3, 9):
        artifact(f"2.{i}.0")
        artifact(f"2.{i}.0", hardware=HW2)

    after = (_count(client, ADD), _count(client, PREVIEW, params))
    assert after == before
    assert max(after) <= 12
    assert client.get(PREVIEW, params).json()["targets"] == 66


def test_a_rollout_overlapping_a_running_one_is_refused_and_not_made(fleet):
    client = _operator("ota.start_rollout")
    assert client.post(ADD, _form(then="start")).status_code == 302
    first = Rollout.objects.get()

    again = client.post(ADD, _form(then="start"))

    assert again.status_code == 200
    assert again.context["error"].startswith("conflict: rollout r-")
    # the esp32 devices were skipped (no build for them): they are not held
    assert (
        f"{first.public_id} (running) of kws already targets 4 of the selected devices"
        in (again.context["error"])
    )
    assert Rollout.objects.count() == 1
