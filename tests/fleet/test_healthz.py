"""``GET /healthz`` for load balancers: public, and ok on a working embedded setup."""

import json
from pathlib import Path

import pytest
from django.test import Client


def test_healthz_is_public_and_ok(storage_dirs: Path, db: None) -> None:
    # given no credentials at all
    client = Client()

    # when
    response = client.get("/healthz")

    # then
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {
        "status": "ok",
        "checks": {"database": "ok", "storage": "ok"},
    }


def test_healthz_ignores_a_bad_token(storage_dirs: Path, db: None) -> None:
    # a broken Authorization header must not take a node out of the load balancer
    response = Client().get("/healthz", headers={"Authorization": "Bearer garbage"})

    assert response.status_code == 200
    assert json.loads(response.content)["status"] == "ok"


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_healthz_only_answers_get(storage_dirs: Path, db: None, method: str) -> None:
    response = getattr(Client(), method)("/healthz")

    assert response.status_code == 405
