"""The enrollment endpoint's throttle: per client address, where X-Forwarded-For counts
only behind configured proxies, in a cache every web worker shares; and the token is
checked before the CSR is parsed."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from service_check import require_service

from fleet import ca
from fleet.views import EnrollThrottle

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 3


@pytest.fixture(autouse=True)
def _low_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EnrollThrottle, "rate", f"{LIMIT}/min")


def _enroll(remote: str = "192.0.2.10", forwarded: str | None = None) -> Any:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    body = {"token": "enr_000000000000_nope", "device_id": "d", "hardware": "x", "csr": "x"}
    return Client(REMOTE_ADDR=remote).post(
        "/api/v1/enroll", json.dumps(body), content_type="application/json", headers=headers
    )


def _refused(response: Any) -> bool:
    return response.status_code == 429


def test_a_new_forwarded_for_each_time_does_not_reset_the_count(db: None) -> None:
    # given a client that used up its allowance, each time claiming another address
    for n in range(LIMIT):
        assert not _refused(_enroll(forwarded=f"198.51.100.{n}"))

    # when it claims yet another
    response = _enroll(forwarded="198.51.100.99")

    # then it is still the one client it is
    assert _refused(response)
    assert response.json()["error"]["code"]


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(settings: Any, db: None) -> None:
    settings.FLEET_TRUSTED_PROXIES = 1
    proxy = "10.0.0.1"
    # given one client behind the proxy that used up its allowance, spoofing the left part
    for n in range(LIMIT):
        assert not _refused(_enroll(proxy, forwarded=f"203.0.113.{n}, 198.51.100.7"))
    assert _refused(_enroll(proxy, forwarded="203.0.113.99, 198.51.100.7"))

    # then another client behind the same proxy is counted on its own
    assert not _refused(_enroll(proxy, forwarded="198.51.100.8"))


def _redis_url() -> str:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        require_service(False, "Redis on 127.0.0.1:6379", "apt-get install redis-server")
    return "redis://127.0.0.1:6379/13"


def _cache_for(kind: str, tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The cache settings for this process and the environment giving another the same."""
    if kind == "redis":
        url = _redis_url()
        return (
            {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url},
            {"FLEET_CACHE_URL": url},
        )
    data = tmp_path / "var"
    return (
        {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(data / "cache"),
        },
        {"FLEET_DATA_DIR": str(data)},
    )


ANOTHER_WORKER = """
import django
django.setup()
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory
from fleet.views import EnrollThrottle
EnrollThrottle.rate = "%d/min"
request = RequestFactory().post("/api/v1/enroll", REMOTE_ADDR="192.0.2.77")
request.user = AnonymousUser()
print("allowed" if EnrollThrottle().allow_request(request, None) else "refused")
"""


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_another_worker_sees_the_count(kind: str, settings: Any, tmp_path: Path, db: None) -> None:
    # given this process's settings as a fresh worker would read them, and a client that
    # used up its allowance here
    cache, env = _cache_for(kind, tmp_path)
    settings.CACHES = {"default": cache}
    from django.core.cache import cache as default

    default.clear()
    for _ in range(LIMIT):
        assert not _refused(_enroll("192.0.2.77"))

    # when the same client reaches another worker process
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEET_", "DATABASE_URL", "DJANGO_", "CELERY_"))
    }
    done = subprocess.run(
        [sys.executable, "-c", ANOTHER_WORKER % LIMIT],
        cwd=ROOT,
        env={
            **clean,
            **env,
            "DJANGO_SETTINGS_MODULE": "fleet.settings",
            "FLEET_DATA_DIR": env.get("FLEET_DATA_DIR", str(tmp_path / "other")),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    # then that worker refuses it too
    assert done.stdout.strip().splitlines()[-1] == "refused"
    default.clear()


def test_the_token_is_checked_before_the_csr_is_parsed(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a CSR parser that must not be reached
    def parse(csr: bytes) -> object:
        raise AssertionError("the CSR was parsed for a caller without a valid token")

    monkeypatch.setattr(ca, "csr_public_key", parse)

    # when a caller with an unknown token sends a CSR
    response = _enroll()

    # then it is refused as unauthorized, not judged on its CSR
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
