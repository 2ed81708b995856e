"""Dashboard benchmark (issue 17): each operator page at fleet size (10 000 devices,
100 000 device events, 50 rollouts, in PostgreSQL) against a plain SELECT of the rows it
shows, in the same run.

Prints each page's server time (median of RUNS, through Django's test client: the whole
view, templates included) and its ratio to the reference (goal <= 3). Asserted: every
page answers 200 within its query bound; never the time ratio (the machine is noisy).
Run with ``pytest tests/bench/test_bench_dashboard.py -m bench -s`` on PostgreSQL.
"""

import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.audit import audit_record
from fleet.models import Device, DeviceEvent
from ota import rollouts
from ota.models import Artifact, Model, Rollout

pytestmark = [pytest.mark.bench, pytest.mark.django_db, pytest.mark.timeout(1200)]
DEVICES = 10_000
EVENTS = 100_000
ROLLOUTS = 50
PER_ROLLOUT = DEVICES // ROLLOUTS
RUNS = 5
RATIO_GOAL = 3.0
QUERY_BOUND = 20
HW = "linux-x86_64-fp32"


def _fleet() -> tuple[User, Model]:
    boss = User.objects.create_superuser("boss", "boss@example.org", "x")
    model = Model.objects.create(name="kws")
    for i, version in enumerate(["1.0.0", "2.0.0"]):
        path = f"models/kws/{version}/{HW}/model.onnx"
        Artifact.objects.create(
            model=model,
            version=version,
            hardware=HW,
            format="onnx",
            release_counter=i + 1,
            target_path=path,
            sha256=f"{i:064x}",
            length=4_000_000,
            storage_key=path,
            published_by=boss,
            metadata_version=i + 1,
        )
    now = timezone.now()
    Device.objects.bulk_create(
        (
            Device(
                device_id=f"dev-{i:05d}",
                hardware=HW,
                online=i % 3 != 0,
                last_seen_at=now - timedelta(minutes=i % 500),
                reported={"models": [{"name": "kws", "version": "1.0.0", "slot": "a"}]},
            )
            for i in range(DEVICES)
        ),
        batch_size=2000,
    )
    pks = list(Device.objects.order_by("pk").values_list("pk", flat=True))
    DeviceEvent.objects.bulk_create(
        (
            DeviceEvent(
                device_id=pks[i % DEVICES],
                seq=i // DEVICES + 1,
                model="kws",
                phase="failed" if i % 7 == 0 else "committed",
                code="hash_mismatch" if i % 7 == 0 else "",
                ts=now - timedelta(seconds=i),
                digest=f"{i:x}",
            )
            for i in range(EVENTS)
        ),
        batch_size=5000,
    )
    for r in range(ROLLOUTS):
        rollout = rollouts.rollout_create(
            model_name="kws",
            strategy="phased",
            version="2.0.0",
            stages=[{"percent": 10}, {"percent": 100}],
            selection={
                "devices": [f"dev-{i:05d}" for i in range(r * PER_ROLLOUT, (r + 1) * PER_ROLLOUT)]
            },
            by=boss,
        )
        rollouts.rollout_start(rollout=rollout, by=boss)
    for i in range(200):
        audit_record(action="publish", target=f"kws 0.{i}.0 ({HW})", by=boss)
    return boss, model


def _median(action: Callable[[], object]) -> float:
    action()  # warm: caches, the connection, template loading
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _getter(client: Client, url: str) -> Callable[[], object]:
    return lambda: client.get(url)


def _select(sql: str, *params: Any) -> Callable[[], object]:
    def run() -> object:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    return run


def test_pages_at_fleet_size_against_a_plain_select() -> None:
    boss, model = _fleet()
    client = Client()
    client.force_login(boss)
    rollout = Rollout.objects.order_by("-pk").first()
    assert rollout is not None
    device = Device.objects.get(device_id="dev-09999")
    # page -> (url, the rows it shows, read with one plain SELECT)
    pages = {
        "overview": (
            "/admin/",
            _select("SELECT hardware, online, last_seen_at, reported FROM fleet_device"),
        ),
        "rollouts list": (
            "/admin/ota/rollout/",
            _select(
                "SELECT r.*, d.state, count(*) FROM ota_rollout r JOIN ota_rolloutdevice d "
                "ON d.rollout_id = r.id GROUP BY r.id, d.state ORDER BY r.id DESC"
            ),
        ),
        "rollout page": (
            f"/admin/ota/rollout/{rollout.pk}/change/",
            _select(
                "SELECT d.*, v.device_id FROM ota_rolloutdevice d JOIN fleet_device v "
                "ON v.id = d.device_id WHERE d.rollout_id = %s ORDER BY d.bucket",
                rollout.pk,
            ),
        ),
        "rollout live part": (
            f"/admin/ota/rollout/{rollout.pk}/progress/",
            _select(
                "SELECT arm, state, count(*) FROM ota_rolloutdevice WHERE rollout_id = %s "
                "GROUP BY arm, state",
                rollout.pk,
            ),
        ),
        "new rollout preview": (
            "/admin/ota/rollout/add/preview/?model=kws&version=2.0.0&select_all=1",
            _select("SELECT hardware, count(*) FROM fleet_device GROUP BY hardware"),
        ),
        "audit log": (
            "/admin/audit/",
            _select("SELECT * FROM fleet_auditevent ORDER BY at DESC LIMIT 50"),
        ),
        "devices list": (
            "/admin/fleet/device/",
            _select("SELECT * FROM fleet_device ORDER BY device_id LIMIT 100"),
        ),
        "device page": (
            f"/admin/fleet/device/{device.pk}/change/",
            _select(
                "SELECT * FROM fleet_deviceevent WHERE device_id = %s "
                "ORDER BY received_at DESC LIMIT 50",
                device.pk,
            ),
        ),
        "model page": (
            f"/admin/ota/model/{model.pk}/change/",
            _select("SELECT reported FROM fleet_device WHERE revoked_at IS NULL"),
        ),
    }
    lines = []
    for name, (url, reference) in pages.items():
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200, url
        queries = len(captured.captured_queries)
        assert queries <= QUERY_BOUND, (name, queries)
        page_time = _median(_getter(client, url))
        plain = _median(reference)
        lines.append(
            f"{name:20s} {page_time * 1000:8.1f} ms  plain SELECT {plain * 1000:7.1f} ms  "
            f"ratio {page_time / plain:5.1f}  queries {queries}"
        )
    print(
        f"\ndashboard pages, {DEVICES} devices, {EVENTS} events, {ROLLOUTS} rollouts "
        f"({connection.vendor}); goal ratio <= {RATIO_GOAL:g}\n" + "\n".join(lines)
    )
