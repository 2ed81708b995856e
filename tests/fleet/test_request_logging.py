"""A failed request is logged once: a 4xx without a traceback (a 404, such as a device
probing for the next root version, at INFO), a 5xx with its traceback. Read from the
console handler's output, which is what an operator sees in var/logs/web.log."""

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from fleet import views
from fleet.logs import RequestLogFilter

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw-long-123456"))
    return client


@pytest.fixture(params=[True, False], ids=["debug", "production"])
def debug(request, settings) -> bool:
    settings.DEBUG = request.param
    return bool(request.param)


class Console:
    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def readouterr(self) -> Any:
        err, self.buffer = self.buffer.getvalue(), io.StringIO()
        self.handler.setStream(self.buffer)
        return type("Captured", (), {"err": err})

    handler: logging.StreamHandler


@pytest.fixture
def console() -> Iterator[Console]:
    """What the console handler (the one with the request filter) writes."""
    handler = next(
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler)
        and any(isinstance(f, RequestLogFilter) for f in h.filters)
    )
    console = Console()
    console.handler = handler
    old = handler.setStream(console.buffer)
    yield console
    handler.setStream(old)


def _lines(console: Any, needle: str) -> list[str]:
    err = console.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if needle in line]


def test_tuf_probe_is_one_info_line(debug: bool, staff: Client, console) -> None:
    console.readouterr()
    assert staff.get("/tuf/2.root.json").status_code == 404
    lines = _lines(console, "/tuf/2.root.json")
    assert len(lines) == 1, lines
    assert " INFO " in lines[0], lines


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("get", "/api/v1/nope", None, 404),
        ("get", "/api/v1/devices/nope/", None, 404),
        ("post", "/api/v1/groups/", "{not json", 400),
        ("post", "/api/v1/groups/", "[" * 5_000, 400),
        ("post", "/api/v1/groups/", '{"name": "' + "x" * 20_000 + '"}', 413),
        ("delete", "/api/v1/devices/", None, 405),
    ],
)
def test_client_error_is_one_line_without_traceback(
    debug: bool, staff: Client, console, settings, method: str, path: str, body: Any, status: int
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    console.readouterr()
    kwargs = {"data": body, "content_type": "application/json"} if body else {}
    assert getattr(staff, method)(path, **kwargs).status_code == status
    assert len(_lines(console, path)) == 1


def test_anonymous_is_one_line(console, db) -> None:
    console.readouterr()
    assert Client().get("/api/v1/devices/").status_code == 401
    lines = _lines(console, "/api/v1/devices/")
    assert len(lines) == 1, lines
    assert " WARNING " in lines[0], lines


def test_server_fault_keeps_its_traceback(debug: bool, staff: Client, console, monkeypatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(views.GroupViewSet, "list", broken)
    console.readouterr()
    assert staff.get("/api/v1/groups/").status_code == 500
    err = console.readouterr().err
    assert err.count(" ERROR django.request ") == 1, err
    assert "Traceback" in err
    assert "RuntimeError: boom" in err


def test_development_server_does_not_repeat_a_failed_request(console) -> None:
    # what runserver logs after django.request already did (a 4xx or 5xx), and for a 200
    log = logging.getLogger("django.server")
    console.readouterr()
    for status in ("404", "400", "500", "200"):
        log.warning(
            '"%s" %s %s',
            f"GET /x{status} HTTP/1.1",
            status,
            "10",
            extra={"status_code": int(status)},
        )
    err = console.readouterr().err
    assert "/x200" in err
    assert "/x404" not in err
    assert "/x400" not in err
    assert "/x500" not in err


def test_admin_has_no_view_site_link_to_an_unrouted_page(staff: Client) -> None:
    page = staff.get("/admin/", headers={"Accept": "text/html"}).content.decode()
    assert "Log out" in page or "logout" in page  # the page we think it is
    assert "View site" not in page
