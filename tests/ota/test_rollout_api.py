"""The rollout REST API: CI opens a phased canary right after publishing (draft or
scheduled); an operator starts, pauses, resumes and aborts it; errors have stable codes."""

import json
from typing import Any

import pytest
from django.test import Client
from publishing_helpers import post_publish, signed_metadata
from rollout_helpers import devices, operator, use_own_director_key, user

from fleet.auth import (
    ALL_MODELS,
    SCOPE_FLEET_READ,
    SCOPE_ROLLOUTS_CREATE,
    SCOPE_ROLLOUTS_OPERATE,
)
from fleet.models import Group
from fleet.services import api_token_create
from ota.models import Rollout
from ota.rollouts import ROLLOUT_CI_PERMISSIONS

pytestmark = pytest.mark.django_db
DATA = b"\x1c\x00\x00\x00TFL3" + b"model bytes" * 100
CANARY = {
    "model": "kws",
    "strategy": "phased",
    "version": "1.0.0",
    "stages": [
        {"percent": 1, "bake_minutes": 60},
        {"percent": 10, "bake_minutes": 60},
        {"percent": 50, "bake_minutes": 120},
        {"percent": 100},
    ],
    "selection": {"groups": ["canary-fleet"]},
    "policy": {"on_breach": "abort", "max_failure_rate": 0.02, "min_finished": 20},
    "schedule": True,
}


class Api:
    def __init__(self, token: str) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> Any:
        return self.client.get(f"/api/v1/{path}", headers=self.headers)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.client.post(
            f"/api/v1/{path}",
            data=json.dumps(body or {}),
            content_type="application/json",
            headers=self.headers,
        )


def _code(response: Any) -> str:
    return str(response.json()["error"]["code"])


@pytest.fixture
def published(kws, release_key, ci_token, tmp_path, settings):
    """kws 1.0.0 published by CI through the API, and a group of devices."""
    use_own_director_key(settings, tmp_path)
    md = signed_metadata(None, release_key.signer, DATA)
    assert post_publish(Client(), ci_token, md, DATA, tmp_path).status_code == 201
    group = Group.objects.create(name="canary-fleet")
    group.devices.add(*devices(30))
    return ci_token


@pytest.fixture
def ci(published):
    # fleet.services.CI_PERMISSIONS does not include these yet: the deployment's choice
    user("ci", *ROLLOUT_CI_PERMISSIONS)
    return Api(published)


@pytest.fixture
def ops(db):
    operator()
    account = user("operator", "fleet.view_device")  # to list a rollout's devices
    return Api(
        api_token_create(
            user=account,
            name="ops",
            scopes=[SCOPE_ROLLOUTS_CREATE, SCOPE_ROLLOUTS_OPERATE, SCOPE_FLEET_READ],
            model_names=[ALL_MODELS],
        )[1]
    )


def test_ci_opens_a_canary_right_after_publishing_and_an_operator_runs_it(ci, ops):
    # CI creates the canary scheduled (waiting for an operator)
    created = ci.post("rollouts/", CANARY)
    assert created.status_code == 201, created.content
    body = created.json()
    rollout_id = body["id"]
    assert rollout_id.startswith("r-")
    assert (body["status"], body["model"], body["version"], body["created_by"]) == (
        "scheduled",
        "kws",
        "1.0.0",
        "ci",
    )
    assert [s["percent"] for s in body["stages"]] == [1, 10, 50, 100]
    assert body["policy"]["on_breach"] == "abort"
    assert body["policy"]["rate_per_minute"] == 100  # defaults filled in

    # CI may not start it, nor give it a start time
    refused = ci.post(f"rollouts/{rollout_id}/start")
    assert (refused.status_code, _code(refused)) == (403, "forbidden")
    timed = ci.post("rollouts/", {**CANARY, "starts_at": "2030-01-01T00:00:00Z"})
    assert (timed.status_code, _code(timed)) == (403, "forbidden")
    assert "ota.start_rollout" in timed.json()["error"]["detail"]
    # nor pause or abort it
    assert ci.post(f"rollouts/{rollout_id}/abort").status_code == 403

    # the operator starts it: devices are materialised
    started = ops.post(f"rollouts/{rollout_id}/start", {"reason": "canary looks fine"})
    assert started.status_code == 200, started.content
    assert started.json()["status"] == "running"
    assert started.json()["progress"]["devices"] == 30

    # pause, resume, abort
    assert ops.post(f"rollouts/{rollout_id}/pause", {"reason": "x"}).json()["status"] == "paused"
    assert ops.post(f"rollouts/{rollout_id}/resume").json()["status"] == "running"
    aborted = ops.post(f"rollouts/{rollout_id}/abort", {"reason": "enough"})
    assert aborted.json()["status"] in {"aborted", "rolled_back"}

    # everybody with view permission reads the rollout, its devices and its audit trail
    detail = ci.get(f"rollouts/{rollout_id}/")
    assert detail.status_code == 200
    devices_page = ops.get(f"rollouts/{rollout_id}/devices?page_size=10")
    assert devices_page.status_code == 200
    assert len(devices_page.json()["results"]) == 10
    assert devices_page.json()["next"]
    audit = ops.get(f"rollouts/{rollout_id}/audit").json()
    assert [(a["to_status"], a["actor_name"]) for a in audit][:5] == [
        ("draft", "ci"),
        ("scheduled", "ci"),
        ("running", "operator"),
        ("paused", "operator"),
        ("running", "operator"),
    ]
    listed = ci.get("rollouts/?model=kws").json()["results"]
    assert [r["id"] for r in listed] == [rollout_id]


def test_draft_then_schedule_by_ci(ci):
    draft = ci.post("rollouts/", {**CANARY, "schedule": False}).json()
    assert draft["status"] == "draft"
    scheduled = ci.post(f"rollouts/{draft['id']}/schedule")
    assert scheduled.json()["status"] == "scheduled"
    back = ci.post(f"rollouts/{draft['id']}/unschedule")
    assert back.json()["status"] == "draft"


@pytest.mark.parametrize(
    ("change", "status", "code", "words"),
    [
        ({"version": "9.9.9"}, 404, "not_found", "kws 9.9.9 is not published"),
        ({"model": "nope"}, 404, "unknown_model", "not registered"),
        ({"stages": [{"percent": 50}, {"percent": 10}]}, 400, "malformed", "increasing"),
        ({"stages": [{"percent": 10}]}, 400, "malformed", "must be 100 percent"),
        ({"selection": {}}, 400, "malformed", "selection is empty"),
        ({"selection": {"groups": ["ghosts"]}}, 404, "not_found", "no group ghosts"),
        ({"policy": {"max_failure_rate": 2}}, 400, "malformed", "policy.max_failure_rate"),
        ({"policy": {"surprise": 1}}, 400, "malformed", "unknown fields: surprise"),
        ({"strategy": "ab"}, 400, "malformed", "an A/B rollout has arms"),
    ],
)
def test_bad_requests_have_stable_codes(ci, change, status, code, words):
    response = ci.post("rollouts/", {**CANARY, **change})
    assert (response.status_code, _code(response)) == (status, code)
    assert words in response.json()["error"]["detail"]
    assert not Rollout.objects.exists()


def test_an_overlapping_canary_is_refused_with_409(ci, ops):
    first = ci.post("rollouts/", CANARY).json()
    second = ci.post("rollouts/", CANARY)
    assert (second.status_code, _code(second)) == (409, "conflict")
    assert (
        f"rollout {first['id']} (scheduled) of kws already targets 30"
        in second.json()["error"]["detail"]
    )
    # the refused schedule left nothing behind but ... nothing: it was one transaction
    assert Rollout.objects.count() == 1


def test_refused_transitions_are_409(ops, ci):
    rollout_id = ci.post("rollouts/", CANARY).json()["id"]
    response = ops.post(f"rollouts/{rollout_id}/resume")
    assert (response.status_code, _code(response)) == (409, "conflict")
    assert response.json()["error"]["detail"] == (
        f"rollout {rollout_id} is scheduled: only a paused rollout can be resumed"
    )
    started = ops.post(f"rollouts/{rollout_id}/start")
    again = ops.post(f"rollouts/{rollout_id}/start")
    assert (started.status_code, again.status_code, _code(again)) == (200, 409, "conflict")


def test_unknown_rollout_and_no_credentials(ops, published):
    assert _code(ops.get("rollouts/r-424242/")) == "not_found"
    # not a rollout id at all: refused by its alphabet (docs/api.md, Identifiers)
    assert _code(ops.get("rollouts/banana/")) == "invalid_identifier"
    anonymous = Client().get("/api/v1/rollouts/")
    assert (anonymous.status_code, _code(anonymous)) == (401, "unauthorized")
