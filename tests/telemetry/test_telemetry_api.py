"""REST: a device's recent telemetry and a rollout's per-arm rollups and summaries, for
the dashboard and CI; permissions and refusals in the API's error shape."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import transaction
from django.test import Client
from telemetry_support import make_device, now_utc

from fleet.auth import SCOPE_FLEET_READ
from fleet.services import api_token_create
from telemetry.ingest import rows_write
from telemetry.models import Granularity
from telemetry.rollups import rollups_compute

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored() -> dict[str, object]:
    device = make_device("dev-1")
    other = make_device("dev-2")
    now = now_utc()
    start = now.replace(second=0) - timedelta(minutes=3)
    rows = []
    for i in range(30):
        ts = start + timedelta(seconds=4 * i)
        rows.append((device.pk, ts, "kws", "1.3.0", "r-9", "A", "latency_ms", 20.0 + i % 5))
        rows.append((device.pk, ts, "kws", "1.3.0", "r-9", "A", "confidence", 0.8))
        rows.append((other.pk, ts, "kws", "1.4.0", "r-9", "B", "latency_ms", 10.0 + i % 3))
    with transaction.atomic():
        rows_write(rows)
    rollups_compute(granularity=Granularity.MINUTE, start=start, end=now)
    return {"start": start, "now": now}


def _client_with(*perms: str) -> Client:
    user = User.objects.create_user(f"reader-{User.objects.count()}")
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    _, token = api_token_create(user=user, name="dashboard", scopes=[SCOPE_FLEET_READ])
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def test_a_devices_recent_samples_newest_first(stored) -> None:
    client = _client_with("telemetry.view_sample")
    body = client.get("/api/v1/telemetry/devices/dev-1/samples?metric=latency_ms&limit=3").json()
    assert body["device_id"] == "dev-1"
    samples = body["samples"]
    assert len(samples) == 3
    assert [s["metric"] for s in samples] == ["latency_ms"] * 3
    assert samples[0]["ts"] > samples[1]["ts"] > samples[2]["ts"]
    assert samples[0] | {"ts": None, "value": None} == {
        "ts": None,
        "model": "kws",
        "version": "1.3.0",
        "rollout_id": "r-9",
        "arm": "A",
        "metric": "latency_ms",
        "value": None,
    }
    all_metrics = client.get("/api/v1/telemetry/devices/dev-1/samples").json()["samples"]
    assert len(all_metrics) == 60
    since = (stored["start"] + timedelta(seconds=100)).isoformat()
    recent = client.get("/api/v1/telemetry/devices/dev-1/samples", {"since": since}).json()
    assert len(recent["samples"]) == 2 * 5  # samples at 104, 108, ..., 116 s


def test_rollups_of_a_rollouts_arms(stored) -> None:
    client = _client_with("telemetry.view_rollup")
    since = (stored["start"] - timedelta(minutes=1)).isoformat()
    body = client.get(
        "/api/v1/telemetry/rollouts/r-9/rollups", {"metric": "latency_ms", "since": since}
    ).json()
    assert body["granularity"] == 60
    arms = {(b["arm"], b["version"]) for b in body["buckets"]}
    assert arms == {("A", "1.3.0"), ("B", "1.4.0")}
    assert sum(b["count"] for b in body["buckets"] if b["arm"] == "A") <= 30
    only_b = client.get(
        "/api/v1/telemetry/rollouts/r-9/rollups",
        {"metric": "latency_ms", "since": since, "arm": "B"},
    ).json()["buckets"]
    assert {b["arm"] for b in only_b} == {"B"}
    assert all(b["p50"] <= b["p95"] <= b["p99"] <= b["max"] for b in only_b)


def test_a_rollouts_summary_per_arm(stored) -> None:
    client = _client_with("telemetry.view_rollup")
    since = (stored["start"] - timedelta(minutes=1)).isoformat()
    body = client.get(
        "/api/v1/telemetry/rollouts/r-9/summary",
        {"metric": "latency_ms", "since": since, "samples": 4},
    ).json()
    assert set(body["arms"]) == {"A", "B"}
    a = body["arms"]["A"]
    assert a["count"] == 30
    assert a["mean"] == pytest.approx(22.0)
    assert a["min"] == 20.0
    assert a["max"] == 24.0
    assert len(a["samples"]) == 4
    empty = client.get(
        "/api/v1/telemetry/rollouts/r-9/summary",
        {"metric": "latency_ms", "since": since, "arm": ["C"]},
    ).json()["arms"]["C"]
    assert empty["count"] == 0
    assert empty["mean"] is None
    assert empty["samples"] == []


@pytest.mark.parametrize(
    ("url", "code", "status"),
    [
        ("/api/v1/telemetry/rollouts/r-9/rollups", "malformed", 400),  # no metric
        (
            "/api/v1/telemetry/rollouts/r-9/rollups?metric=latency_ms&granularity=7",
            "malformed",
            400,
        ),
        ("/api/v1/telemetry/rollouts/r-9/summary?metric=bad%20name", "malformed", 400),
        (
            "/api/v1/telemetry/rollouts/r-9/summary?metric=x&since=2026-01-02T00:00:00Z"
            "&until=2026-01-01T00:00:00Z",
            "malformed",
            400,
        ),
        ("/api/v1/telemetry/devices/dev-1/samples?limit=0", "malformed", 400),
        ("/api/v1/telemetry/devices/nobody/samples", "not_found", 404),
    ],
)
def test_refusals_have_a_stable_code(stored, url: str, code: str, status: int) -> None:
    client = _client_with("telemetry.view_sample", "telemetry.view_rollup")
    response = client.get(url)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_permissions_are_required(stored) -> None:
    assert Client().get("/api/v1/telemetry/devices/dev-1/samples").status_code == 401
    no_perms = _client_with()
    response = no_perms.get("/api/v1/telemetry/rollouts/r-9/rollups?metric=latency_ms")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    samples_only = _client_with("telemetry.view_sample")
    assert samples_only.get("/api/v1/telemetry/devices/dev-1/samples").status_code == 200
    assert samples_only.get("/api/v1/telemetry/rollouts/r-9/summary?metric=x").status_code == 403
