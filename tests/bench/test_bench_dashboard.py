"""Dashboard benchmark (issue 17): each operator page at fleet size (10 000 devices,
100 000 device events, 50 rollouts, in PostgreSQL) against a plain SELECT of the rows it
shows, in the same run.

Prints each page's server time (median of RUNS, through Django's test client: the whole
view, templates included) and its ratio to two references (goal <= 3): a plain SELECT of
every row the page reads to show what it shows, as plain cursor executes ("plain"), and
the page's own SQL statements, as captured, replayed the same way ("replay": what the
page would cost with no Python around its queries). Asserted: every page answers 200
within its query bound; never the time ratio (the machine is noisy).
Run with ``pytest tests/bench/test_bench_dashboard.py -m bench -s`` on PostgreSQL;
``BENCH_PAGES="rollout page,device page"`` measures only the pages named.
"""

import os
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
    return _selects((sql, params))


def _selects(*statements: tuple[str, tuple[Any, ...]]) -> Callable[[], object]:
    """Each statement executed and fetched in turn, on one cursor."""

    def run() -> object:
        with connection.cursor() as cursor:
            out = []
            for sql, params in statements:
                cursor.execute(sql, params)
                out.append(cursor.fetchall())
            return out

    return run


def _replay(statements: list[str]) -> Callable[[], object]:
    """The page's own statements, as executed (parameters inlined), without Django."""

    def run() -> object:
        with connection.cursor() as cursor:
            out = []
            for sql in statements:
                cursor.execute(sql)
                out.append(cursor.fetchall())
            return out

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
            _selects(
                (
                    "SELECT r.*, m.name, u.username FROM ota_rollout r "
                    "JOIN ota_model m ON m.id = r.model_id "
                    "LEFT JOIN auth_user u ON u.id = r.created_by_id WHERE r.id = %s",
                    (rollout.pk,),
                ),
                (
                    "SELECT arm, state, last_phase, last_code, count(*) FROM ota_rolloutdevice "
                    "WHERE rollout_id = %s GROUP BY arm, state, last_phase, last_code",
                    (rollout.pk,),
                ),
                (
                    "SELECT d.device_id, v.device_id, v.hardware, d.arm, d.state, "
                    "d.last_phase, d.last_code, d.attempts, d.notified_at "
                    "FROM ota_rolloutdevice d JOIN fleet_device v ON v.id = d.device_id "
                    "WHERE d.rollout_id = %s ORDER BY d.bucket LIMIT 50",
                    (rollout.pk,),
                ),
                (
                    "SELECT at, actor_name, from_status, to_status, reason "
                    "FROM ota_rolloutauditevent WHERE rollout_id = %s ORDER BY at, id",
                    (rollout.pk,),
                ),
            ),
        ),
        "rollout live part": (
            f"/admin/ota/rollout/{rollout.pk}/progress/",
            _selects(
                (
                    "SELECT r.*, m.name FROM ota_rollout r "
                    "JOIN ota_model m ON m.id = r.model_id WHERE r.id = %s",
                    (rollout.pk,),
                ),
                (
                    "SELECT arm, state, last_phase, last_code, count(*) FROM ota_rolloutdevice "
                    "WHERE rollout_id = %s GROUP BY arm, state, last_phase, last_code",
                    (rollout.pk,),
                ),
            ),
        ),
        "new rollout preview": (
            "/admin/ota/rollout/add/preview/?model=kws&version=2.0.0&select_all=1",
            _select("SELECT hardware, count(*) FROM fleet_device GROUP BY hardware"),
        ),
        "audit log": (
            "/admin/audit/",
            # both trails, newest first, and their count for the page links
            _selects(
                (
                    "SELECT count(*) FROM (SELECT at FROM ota_rolloutauditevent "
                    "UNION ALL SELECT at FROM fleet_auditevent) t",
                    (),
                ),
                (
                    "SELECT * FROM (SELECT at, actor_name, 'rollout' AS action, "
                    "'r-' || rollout_id AS target, reason, rollout_id, from_status, to_status "
                    "FROM ota_rolloutauditevent UNION ALL SELECT at, actor_name, action, target, "
                    "reason, NULL, '', '' FROM fleet_auditevent) t ORDER BY at DESC LIMIT 50",
                    (),
                ),
            ),
        ),
        "devices list": (
            "/admin/fleet/device/",
            # a page of devices, their count, and the filters' choices
            _selects(
                (
                    "SELECT count(*) FROM fleet_device",
                    (),
                ),
                (
                    "SELECT id, device_id, hardware, reported, online, agent_version, "
                    "last_seen_at, revoked_at FROM fleet_device ORDER BY device_id LIMIT 100",
                    (),
                ),
                (
                    "SELECT DISTINCT hardware FROM fleet_device ORDER BY hardware",
                    (),
                ),
                (
                    "SELECT id, name FROM fleet_group",
                    (),
                ),
                (
                    "SELECT id, name FROM fleet_tag",
                    (),
                ),
            ),
        ),
        "devices by last seen": (
            # the superuser has actions: column 0 is their checkbox, 6 is "last seen"
            "/admin/fleet/device/?o=6",
            # the devices heard from longest ago first: no index, a top-100 sort
            _selects(
                (
                    "SELECT count(*) FROM fleet_device",
                    (),
                ),
                (
                    "SELECT id, device_id, hardware, reported, online, agent_version, "
                    "last_seen_at, revoked_at FROM fleet_device "
                    "ORDER BY last_seen_at ASC NULLS LAST, device_id LIMIT 100",
                    (),
                ),
                (
                    "SELECT DISTINCT hardware FROM fleet_device ORDER BY hardware",
                    (),
                ),
                (
                    "SELECT id, name FROM fleet_group",
                    (),
                ),
                (
                    "SELECT id, name FROM fleet_tag",
                    (),
                ),
            ),
        ),
        "device page": (
            f"/admin/fleet/device/{device.pk}/change/",
            _selects(
                (
                    "SELECT v.*, s.payload FROM fleet_device v LEFT JOIN fleet_desiredstate s "
                    "ON s.device_id = v.id AND s.seq > 0 WHERE v.id = %s",
                    (device.pk,),
                ),
                (
                    "SELECT ts, received_at, model, phase, code, detail, rollout_id "
                    "FROM fleet_deviceevent WHERE device_id = %s "
                    "ORDER BY received_at DESC, id DESC LIMIT 50",
                    (device.pk,),
                ),
                (
                    "SELECT model, max(ts) FROM fleet_deviceevent "
                    "WHERE device_id = %s AND phase = 'committed' GROUP BY model",
                    (device.pk,),
                ),
                (
                    "SELECT d.rollout_id, r.status, m.name, d.arm, a.version, d.state, "
                    "d.last_code, d.attempts FROM ota_rolloutdevice d "
                    "JOIN ota_rollout r ON r.id = d.rollout_id "
                    "JOIN ota_model m ON m.id = r.model_id "
                    "LEFT JOIN ota_artifact a ON a.id = d.artifact_id "
                    "WHERE d.device_id = %s ORDER BY d.rollout_id DESC LIMIT 20",
                    (device.pk,),
                ),
                (
                    "SELECT serial, issued_at, not_after, revoked_at FROM fleet_devicecertificate "
                    "WHERE device_id = %s ORDER BY issued_at DESC",
                    (device.pk,),
                ),
                (
                    "SELECT 'tag', t.name FROM fleet_tag t JOIN fleet_device_tags dt "
                    "ON dt.tag_id = t.id WHERE dt.device_id = %s UNION ALL "
                    "SELECT 'group', g.name FROM fleet_group g JOIN fleet_device_groups dg "
                    "ON dg.group_id = g.id WHERE dg.device_id = %s UNION ALL "
                    "(SELECT 'tag_choice', name FROM fleet_tag ORDER BY name LIMIT 200) "
                    "UNION ALL "
                    "(SELECT 'group_choice', name FROM fleet_group ORDER BY name LIMIT 200)",
                    (device.pk, device.pk),
                ),
                (
                    "SELECT model, version, metric, value FROM telemetry_sample "
                    "WHERE device_id = %s ORDER BY ts DESC, id LIMIT 500",
                    (device.pk,),
                ),
            ),
        ),
        "model page": (
            f"/admin/ota/model/{model.pk}/change/",
            _select("SELECT reported FROM fleet_device WHERE revoked_at IS NULL"),
        ),
    }
    wanted = {n.strip() for n in os.environ.get("BENCH_PAGES", "").split(",") if n.strip()}
    assert wanted <= set(pages), sorted(wanted - set(pages))
    lines = []
    for name, (url, reference) in pages.items():
        if wanted and name not in wanted:
            continue
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200, url
        # Read now: the next request empties the connection's query log.
        statements = [q["sql"] for q in captured.captured_queries]
        queries = len(statements)
        assert queries <= QUERY_BOUND, (name, queries)
        page_time = _median(_getter(client, url))
        plain = _median(reference)
        replay = _median(_replay(statements))
        lines.append(
            f"{name:20s} {page_time * 1000:8.1f} ms  plain {plain * 1000:7.1f} ms "
            f"ratio {page_time / plain:5.1f}  replay {replay * 1000:7.1f} ms "
            f"ratio {page_time / replay:5.1f}  queries {queries}"
        )
    print(
        f"\ndashboard pages, {DEVICES} devices, {EVENTS} events, {ROLLOUTS} rollouts "
        f"({connection.vendor}); goal ratio <= {RATIO_GOAL:g}\n" + "\n".join(lines)
    )
