"""GET /metrics on the web process: who may read it, and the fleet gauges it computes
from the database at scrape time (never a device id in a label)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from telemetry_support import make_device, now_utc

from device_agent.protocol.messages import Phase
from fleet.models import DeviceEvent
from ota.models import TufMetadata
from telemetry import fleet_stats, metrics
from telemetry.ingest import rows_write
from telemetry.models import Granularity
from telemetry.rollups import rollups_compute

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-metrics-token-0123456789"


@pytest.fixture(autouse=True)
def _fresh(settings, monkeypatch):
    settings.FLEET_METRICS_DB_CACHE_SECONDS = 0
    settings.FLEET_METRICS_ROLLOUT_SOURCE = ""
    monkeypatch.setattr(metrics, "_rollout_sources", [])


def _scrape(
    client: Client | None = None, **headers: Any
) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            families.setdefault(s.name, []).append((s.labels, s.value))
    return families


def _value(families: dict, name: str, **labels: str) -> float | None:
    for sample_labels, value in families.get(name, []):
        if sample_labels == labels:
            return value
    return None


def test_loopback_is_allowed_by_default_and_others_need_the_token(settings) -> None:
    assert _scrape()["fleet_metrics_db_up"] == [({}, 1.0)]
    settings.FLEET_METRICS_TOKEN = TOKEN
    outsider = Client(REMOTE_ADDR="203.0.113.7")
    refused = outsider.get("/metrics")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert outsider.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert _scrape(outsider, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")["fleet_metrics_db_up"]
    settings.FLEET_METRICS_ALLOW = ["203.0.113.0/24"]
    assert _scrape(outsider)["fleet_metrics_db_up"]


def test_with_an_empty_allow_list_only_the_token_works(settings) -> None:
    settings.FLEET_METRICS_ALLOW = []
    settings.FLEET_METRICS_TOKEN = TOKEN
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 401
    assert _scrape(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")["fleet_metrics_db_up"]


def test_the_route_can_be_switched_off(settings) -> None:
    settings.FLEET_METRICS_WEB = False
    assert Client().get("/metrics").status_code == 404


def test_fleet_gauges_come_from_the_database() -> None:
    # given devices online and offline with the models they report, finished updates,
    # TUF metadata and a rollout arm's rollups
    reported = {"v": 1, "models": [{"name": "kws", "version": "1.4.0"}]}
    a = make_device("dev-a", hardware="esp32s3-int8", online=True, reported=reported)
    make_device("dev-b", hardware="esp32s3-int8", online=False, reported=reported)
    make_device("dev-c", hardware="jetson-orin-fp16", online=True)
    make_device("dev-r", hardware="jetson-orin-fp16", online=True, revoked_at=now_utc())
    for seq, (phase, code) in enumerate(
        [
            (Phase.COMMITTED, ""),
            (Phase.FAILED, "hash_mismatch"),
            (Phase.FAILED, "hash_mismatch"),
            (Phase.DOWNLOADING, ""),
            (Phase.REJECTED, "made_up_code"),
        ]
    ):
        DeviceEvent.objects.create(
            device=a, seq=seq, phase=phase, code=code, ts=now_utc(), digest=str(seq)
        )
    expires = datetime(2026, 12, 1, tzinfo=UTC)
    TufMetadata.objects.create(
        role="timestamp", version=1, data=b"{}", expires=expires - timedelta(days=1)
    )
    TufMetadata.objects.create(role="timestamp", version=2, data=b"{}", expires=expires)
    minute = now_utc().replace(second=0) - timedelta(minutes=2)
    with transaction.atomic():
        rows_write(
            [
                (
                    a.pk,
                    minute + timedelta(seconds=i),
                    "kws",
                    "1.4.0",
                    "r-9",
                    "B",
                    "latency_ms",
                    float(i),
                )
                for i in range(11)
            ]
        )
    rollups_compute(granularity=Granularity.MINUTE, start=minute, end=minute + timedelta(minutes=1))
    # when
    families = _scrape()
    # then
    assert _value(families, "fleet_devices", hardware="esp32s3-int8", state="online") == 1
    assert _value(families, "fleet_devices", hardware="esp32s3-int8", state="offline") == 1
    assert _value(families, "fleet_devices", hardware="jetson-orin-fp16", state="online") == 1
    # absent presences are 0, not missing ("No data" on a panel)
    assert _value(families, "fleet_devices", hardware="jetson-orin-fp16", state="offline") == 0
    assert (
        _value(
            families,
            "fleet_device_models",
            hardware="esp32s3-int8",
            model="kws",
            version="1.4.0",
            state="online",
        )
        == 1
    )
    assert (
        _value(families, "fleet_update_outcomes_total", phase="failed", code="hash_mismatch") == 2
    )
    assert _value(families, "fleet_update_outcomes_total", phase="committed", code="none") == 1
    assert _value(families, "fleet_update_outcomes_total", phase="rejected", code="other") == 1
    # every known phase and code is there from zero, so increase() sees its first burst
    assert (
        _value(families, "fleet_update_outcomes_total", phase="rolled_back", code="disk_full") == 0
    )
    assert (
        _value(families, "fleet_tuf_metadata_expires_timestamp_seconds", role="timestamp")
        == expires.timestamp()
    )
    labels = {
        "rollout": "r-9",
        "arm": "B",
        "model": "kws",
        "version": "1.4.0",
        "metric": "latency_ms",
    }
    assert _value(families, "fleet_telemetry_arm_stat", **labels, stat="count") == 11
    assert _value(families, "fleet_telemetry_arm_stat", **labels, stat="p50") == 5
    # never a device id, and none of the bridge's own metrics
    text = Client().get("/metrics").content.decode()
    assert "dev-a" not in text
    assert "dev-b" not in text
    assert not any(name.startswith(("fleet_bridge_", "fleet_model_")) for name in families)
    assert "fleet_telemetry_samples_stored_total" not in families


def test_rollout_progress_comes_from_the_registered_source() -> None:
    assert "fleet_rollout_info" not in _scrape()  # nothing registered: nothing exported

    def source() -> list[metrics.RolloutArmProgress]:
        return [
            metrics.RolloutArmProgress(
                rollout="r-1",
                model="kws",
                strategy="phased",
                state="aborted",
                stage=2,
                stage_percent=50.0,
                arm="",
                devices={"committed": 40, "rolled_back": 3},
                failures={"health_check_failed": 3},
                gates={
                    "failure_rate": metrics.GateFigure(value=0.07, threshold=0.05, state="breached")
                },
            )
        ]

    metrics.rollout_progress_source_register(source)
    families = _scrape()
    assert (
        _value(
            families,
            "fleet_rollout_info",
            rollout="r-1",
            model="kws",
            strategy="phased",
            state="aborted",
        )
        == 1
    )
    assert _value(families, "fleet_rollouts", state="aborted") == 1
    assert _value(families, "fleet_rollout_stage_percent", rollout="r-1") == 50
    assert (
        _value(families, "fleet_rollout_devices", rollout="r-1", arm="none", status="rolled_back")
        == 3
    )
    assert (
        _value(
            families,
            "fleet_rollout_failures_total",
            rollout="r-1",
            arm="none",
            code="health_check_failed",
        )
        == 3
    )
    assert (
        _value(
            families, "fleet_rollout_gate_passing", rollout="r-1", arm="none", gate="failure_rate"
        )
        == 0
    )
    gate = {"rollout": "r-1", "arm": "none", "gate": "failure_rate"}
    assert _value(families, "fleet_rollout_gate_state", **gate, state="breached") == 1
    assert _value(families, "fleet_rollout_gate_state", **gate, state="passing") == 0
    assert _value(families, "fleet_rollout_gate_state", **gate, state="insufficient_data") == 0


def test_a_finished_rollouts_newest_rollup_is_not_exported() -> None:
    # given rollups of three rollouts: r-8 finished, r-9 running, r-7 finished long ago
    # (the engine no longer reports it) with devices still tagging samples with it
    device = make_device("dev-a", hardware="esp32s3-int8", online=True)
    minute = now_utc().replace(second=0) - timedelta(minutes=2)
    with transaction.atomic():
        rows_write(
            [
                (device.pk, minute, "kws", "1.4.0", rollout, "B", "latency_ms", 1.0)
                for rollout in ("r-7", "r-8", "r-9")
            ]
        )
    rollups_compute(granularity=Granularity.MINUTE, start=minute, end=minute + timedelta(minutes=1))

    def source() -> list[metrics.RolloutArmProgress]:
        return [
            metrics.RolloutArmProgress(
                rollout=rollout,
                model="kws",
                strategy="ab",
                state=state,
                stage=0,
                stage_percent=100.0,
                arm="B",
                devices={"succeeded": 1},
                failures={},
                gates={},
                finished=finished,
                created=now_utc(),
            )
            for rollout, state, finished in (("r-8", "completed", True), ("r-9", "running", False))
        ]

    metrics.rollout_progress_source_register(source)
    # when
    families = _scrape()
    # then only the running rollout's arm figures are exported
    rollouts = {labels["rollout"] for labels, _ in families["fleet_telemetry_arm_stat"]}
    assert rollouts == {"r-9"}
    created = _value(families, "fleet_rollout_created_timestamp_seconds", rollout="r-8")
    assert created is not None
    assert abs(created - now_utc().timestamp()) < 60


def test_a_database_failure_is_reported_not_raised(monkeypatch) -> None:
    def broken(**kwargs: object) -> None:
        raise RuntimeError("database down")

    monkeypatch.setattr(fleet_stats, "fleet_stats_read", broken)
    families = _scrape()
    assert families["fleet_metrics_db_up"] == [({}, 0.0)]
    assert "fleet_devices" not in families


@pytest.mark.django_db(transaction=True)
def test_metrics_serve_answers_on_its_own_port() -> None:
    import threading
    import urllib.error
    import urllib.request

    from telemetry.management.commands.metrics_serve import metrics_server

    make_device("dev-a", hardware="esp32s3-int8", online=True)
    server = metrics_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            body = response.read().decode()
        assert 'fleet_devices{hardware="esp32s3-int8",state="online"} 1.0' in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/other", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
