"""Bounds on the texts, lists and times the fleet and telemetry endpoints take (docs/api.md):
over them is a 400 ``malformed`` and nothing is written; NUL characters in a URL are a
400, not a database error."""

import json
from typing import Any

import pytest
from api_seed import Seeded, api_seed
from director_keys import own_director_key
from django.test import Client

from fleet.models import DynamicGroup, Group

pytestmark = pytest.mark.django_db


@pytest.fixture
def seeded(settings, tmp_path) -> Seeded:
    own_director_key(settings, tmp_path)
    return api_seed()


def _call(seeded: Seeded, method: str, path: str, body: Any = None) -> Any:
    client = Client(raise_request_exception=False)
    return getattr(client, method)(
        path,
        json.dumps(body) if body is not None else None,
        content_type="application/json",
        headers={"Authorization": f"Bearer {seeded.operator_token}"},
    )


def _refused(response: Any) -> None:
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["code"] == "malformed"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/groups/", {"name": "big", "description": "d" * 1024 * 1024}),
        ("/api/v1/groups/", {"name": "big", "description": "d" * 2001}),
        ("/api/v1/dynamic-groups/", {"name": "big", "description": "d" * 2001}),
        ("/api/v1/dynamic-groups/", {"name": "big", "hardware": ["hw"] * 65}),
        ("/api/v1/dynamic-groups/", {"name": "big", "tags": [f"t{i}" for i in range(65)]}),
    ],
)
def test_group_texts_and_lists_are_bounded(seeded: Seeded, path: str, body: Any) -> None:
    groups = Group.objects.count() + DynamicGroup.objects.count()
    _refused(_call(seeded, "post", path, body))
    assert Group.objects.count() + DynamicGroup.objects.count() == groups


def test_group_at_its_bounds_is_taken(seeded: Seeded) -> None:
    made = _call(seeded, "post", "/api/v1/groups/", {"name": "ok", "description": "d" * 2000})
    assert made.status_code == 201, made.content[:300]
    dynamic = {"name": "ok", "hardware": ["hw"] * 64, "description": "d" * 2000}
    assert _call(seeded, "post", "/api/v1/dynamic-groups/", dynamic).status_code == 201


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        # over-long names are outside their identifier's alphabet: the identifier rules' code
        ("/api/v1/devices/dev-000/", {"groups": ["g" * 65]}, "invalid_identifier"),
        ("/api/v1/groups/canary/members", {"add": ["d" * 65]}, "invalid_identifier"),
        ("/api/v1/devices/dev-000/", {"tags": [f"t{i}" for i in range(65)]}, "malformed"),
    ],
)
def test_device_labels_and_members_are_bounded(
    seeded: Seeded, path: str, body: Any, code: str
) -> None:
    method = "patch" if path.endswith("/") else "post"
    response = _call(seeded, method, path, body)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "query",
    [
        "since=0001-01-01T00:00:00Z",
        "until=0001-01-01T00:30:00Z",
        "until=9999-12-31T23:59:59Z",
        "since=2200-01-01T00:00:00Z",
    ],
)
def test_telemetry_times_are_bounded(seeded: Seeded, query: str) -> None:
    rollout = seeded.rollouts[0].public_id
    for path in (
        f"/api/v1/telemetry/rollouts/{rollout}/rollups?metric=latency_ms&{query}",
        f"/api/v1/telemetry/rollouts/{rollout}/summary?metric=latency_ms&{query}",
    ):
        _refused(_call(seeded, "get", path))
    if query.startswith("since"):
        _refused(_call(seeded, "get", f"/api/v1/telemetry/devices/dev-000/samples?{query}"))


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/api/v1/devices/?hardware=a%00b", "malformed"),
        ("/api/v1/devices/?q=%00", "malformed"),
        ("/api/v1/rollouts/?model=k%00ws", "malformed"),
        ("/api/v1/rollouts/?status=x&%00=1", "malformed"),
        # in the path: the identifier rules' converters
        ("/api/v1/devices/a%00b/", "invalid_identifier"),
        ("/api/v1/telemetry/devices/a%00b/samples", "invalid_identifier"),
    ],
)
def test_nul_in_a_url_is_a_400(seeded: Seeded, path: str, code: str) -> None:
    response = _call(seeded, "get", path)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["code"] == code
