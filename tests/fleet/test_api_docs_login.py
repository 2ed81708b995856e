"""The browsable API docs: a browser without a session goes to the admin's login page
and comes back after it; an API client gets the JSON 401."""

from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/"])
def test_browser_without_session_is_sent_to_login_and_back(path: str) -> None:
    client = Client()
    response = client.get(path, headers=BROWSER)
    assert response.status_code == 302
    target = urlsplit(response["Location"])
    assert target.path == "/admin/login/"
    assert parse_qs(target.query)["next"] == [path]
    # then logging in there brings the browser back to the docs
    User.objects.create_superuser("op", "op@example.com", "pw-long-123456")
    login = client.post(
        response["Location"],
        {"username": "op", "password": "pw-long-123456", "next": path},
        headers=BROWSER,
    )
    assert login.status_code == 302
    assert login["Location"] == path
    page = client.get(path, headers=BROWSER)
    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/", "/api/schema/"])
@pytest.mark.parametrize("accept", ["application/json", "*/*", ""])
def test_api_client_without_credentials_gets_json_401(path: str, accept: str) -> None:
    response = Client().get(path, headers={"Accept": accept} if accept else {})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
