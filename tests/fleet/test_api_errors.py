"""Every /api/ answer to a bad request is the JSON envelope ``{"error": {...}}`` with a
stable code (docs/api.md), whatever produced it: unknown paths, oversized and deeply
nested bodies, throttling, server faults; with DEBUG=True (the quick start) too, and an
API client never gets Django's debug page."""

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError
from django.test import Client
from rest_framework.throttling import BaseThrottle

from fleet import views

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[True, False], ids=["debug", "production"])
def debug(request, settings) -> bool:
    settings.DEBUG = request.param
    return bool(request.param)


@pytest.fixture
def staff(db) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw-long-123456"))
    return client


def _error(response: Any, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    if response.has_header("Content-Length"):  # a client reads this many bytes
        assert int(response["Content-Length"]) == len(response.content)
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["detail"]
    return dict(body["error"])


@pytest.mark.parametrize(
    "path", ["/api/v1/nope", "/api/nope", "/api/v1/groups/x/y/z", "/api/v2/models/"]
)
def test_unknown_api_path_is_not_found(debug: bool, staff: Client, path: str) -> None:
    _error(staff.get(path), 404, "not_found")
    # a browser too: /api/ is the API
    _error(staff.get(path, headers={"Accept": "text/html"}), 404, "not_found")


def test_device_probing_tuf_gets_no_debug_page(debug: bool, staff: Client) -> None:
    _error(staff.get("/tuf/2.root.json", headers={"Accept": "*/*"}), 404, "not_found")


def test_browser_outside_api_still_gets_html(debug: bool, staff: Client) -> None:
    response = staff.get("/admin/nope/", headers={"Accept": "text/html"})
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_wrong_method_has_its_code(debug: bool, staff: Client) -> None:
    _error(staff.delete("/api/v1/devices/"), 405, "method_not_allowed")


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_body_over_the_limit_is_payload_too_large(
    debug: bool, staff: Client, settings, content_type: str
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = '{"name": "g", "description": "' + "x" * 20_000 + '"}'
    if content_type != "application/json":
        body = "name=g&description=" + "x" * 20_000
    _error(staff.post("/api/v1/groups/", body, content_type=content_type), 413, "payload_too_large")


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,
        '{"a":' * 50_000,
        "[" * 40 + "]" * 40,
        '{"name": ' + "[" * 500 + "]" * 500 + "}",
    ],
)
def test_deeply_nested_json_is_malformed(debug: bool, staff: Client, body: str) -> None:
    detail = _error(
        staff.post("/api/v1/groups/", body, content_type="application/json"), 400, "malformed"
    )
    assert "nest" in detail["detail"] or "JSON parse error" in detail["detail"]


def test_nesting_within_the_limit_parses(staff: Client) -> None:
    body = '{"name": "g", "description": "d", "x": ' + "[" * 20 + "]" * 20 + "}"
    response = staff.post("/api/v1/groups/", body, content_type="application/json")
    assert response.status_code == 201, response.content


class _Once(BaseThrottle):
    seen = 0

    def allow_request(self, request: Any, view: Any) -> bool:
        _Once.seen += 1
        return _Once.seen <= 1

    def wait(self) -> float | None:
        return 42


class _NoWait(_Once):
    def wait(self) -> None:
        return None


@pytest.mark.parametrize("throttle", [_Once, _NoWait])
def test_throttled_has_its_own_code_and_retry_after(
    debug: bool, staff: Client, monkeypatch, throttle: type[_Once]
) -> None:
    _Once.seen = 0
    monkeypatch.setattr(views.GroupViewSet, "throttle_classes", [throttle])
    assert staff.get("/api/v1/groups/").status_code == 200
    response = staff.get("/api/v1/groups/")
    _error(response, 429, "throttled")
    assert int(response["Retry-After"]) >= 1


def test_server_fault_is_internal_never_a_debug_page(
    debug: bool, staff: Client, monkeypatch, caplog
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(views.GroupViewSet, "list", broken)
    response = staff.get("/api/v1/groups/", headers={"Accept": "text/html"})
    detail = _error(response, 500, "internal")
    assert "secret internals" not in response.content.decode()
    assert "logged" in detail["detail"]
    assert any("secret internals" in (r.exc_text or str(r.exc_info)) for r in caplog.records)


def test_unauthenticated_is_json(debug: bool) -> None:
    _error(Client().get("/api/v1/devices/"), 401, "unauthorized")
    _error(
        Client().get("/api/v1/devices/", headers={"Authorization": "Bearer nope"}),
        401,
        "unauthorized",
    )


@pytest.mark.parametrize("path", ["/api/v1/groups/", "/api/v1/dynamic-groups/"])
def test_a_taken_group_name_is_refused_not_a_server_fault(staff: Client, path: str) -> None:
    # found by the schema run: declaring the name field dropped the model's unique check
    assert staff.post(path, {"name": "0"}, content_type="application/json").status_code == 201
    _error(staff.post(path, {"name": "0"}, content_type="application/json"), 400, "malformed")


def test_a_unique_violation_from_a_concurrent_writer_is_a_conflict(
    debug: bool, staff: Client, monkeypatch
) -> None:
    def raced(*args: Any, **kwargs: Any) -> None:
        raise IntegrityError("UNIQUE constraint failed: fleet_group.name")

    monkeypatch.setattr(views.GroupViewSet, "perform_create", raced)
    response = staff.post("/api/v1/groups/", {"name": "g"}, content_type="application/json")
    detail = _error(response, 409, "conflict")
    assert "UNIQUE" not in detail["detail"]
