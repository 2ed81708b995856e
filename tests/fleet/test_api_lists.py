"""Every list of the REST API lists its rows, and a paginated one walks them page by page
through its ``next`` links (groups and dynamic groups answered 500: DRF's default cursor
orders by a ``created`` field these models do not have)."""

from typing import Any

import pytest
from api_seed import Seeded, api_seed
from director_keys import own_director_key
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.mixins import ListModelMixin

pytestmark = pytest.mark.django_db


@pytest.fixture
def seeded(settings, tmp_path) -> Seeded:
    own_director_key(settings, tmp_path)
    return api_seed()


def _lists(seeded: Seeded) -> dict[str, tuple[str, int]]:
    """URL name -> (path, rows expected) of every paginated list."""
    rollout = seeded.rollouts[0].public_id
    return {
        "device-list": ("/api/v1/devices/", 4),
        "group-list": ("/api/v1/groups/", 2),
        "dynamic-group-list": ("/api/v1/dynamic-groups/", 2),
        "dynamic-group-devices": ("/api/v1/dynamic-groups/canary-x86/devices", 4),
        "rollout-list": ("/api/v1/rollouts/", 2),
        "rollout-devices": (f"/api/v1/rollouts/{rollout}/devices", 4),
    }


def _get(client: Client, token: str, url: str) -> Any:
    response = client.get(url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, (url, response.content[:300])
    return response.json()


def _list_views() -> set[str]:
    """Names of the URL patterns whose view lists with a paginator."""
    names: set[str] = set()
    stack: list[Any] = list(get_resolver().url_patterns)
    while stack:
        item = stack.pop()
        if isinstance(item, URLResolver):
            stack.extend(item.url_patterns)
        elif isinstance(item, URLPattern):
            cls = getattr(item.callback, "cls", None)
            if cls is not None and issubclass(cls, ListModelMixin) and cls.pagination_class:
                actions = getattr(item.callback, "actions", None) or {"get": "list"}
                if actions.get("get") == "list":
                    names.add(str(item.name))
    return names


def test_every_paginated_list_is_covered(seeded: Seeded) -> None:
    assert _list_views() == set(_lists(seeded))


@pytest.mark.parametrize(
    "name",
    [
        "device-list",
        "group-list",
        "dynamic-group-list",
        "dynamic-group-devices",
        "rollout-list",
        "rollout-devices",
    ],
)
def test_list_walks_every_row_one_per_page(seeded: Seeded, name: str) -> None:
    path, expected = _lists(seeded)[name]
    client = Client()
    url: str | None = f"{path}?page_size=1"
    rows: list[Any] = []
    pages = 0
    while url:
        page = _get(client, seeded.operator_token, url)
        assert len(page["results"]) <= 1
        rows += page["results"]
        pages += 1
        url = page["next"]
    assert len(rows) == expected
    assert pages >= expected
    assert len({repr(sorted(r.items())) for r in rows}) == expected  # no row twice


@pytest.mark.parametrize(
    ("path", "key", "expected"),
    [
        ("/api/v1/models/", None, 2),
        ("/api/v1/models/kws/versions/", None, 2),
        ("ROLLOUT/audit", None, 4),
        ("/api/v1/telemetry/devices/dev-000/samples", "samples", 2),
        ("ROLLUPS", "buckets", 2),
    ],
)
def test_unpaginated_lists(seeded: Seeded, path: str, key: str | None, expected: int) -> None:
    rollout = seeded.rollouts[0].public_id
    path = path.replace("ROLLOUT", f"/api/v1/rollouts/{rollout}").replace(
        "ROLLUPS", f"/api/v1/telemetry/rollouts/{rollout}/rollups?metric=latency_ms"
    )
    body = _get(Client(), seeded.operator_token, path)
    rows = body[key] if key else body
    assert len(rows) >= expected
