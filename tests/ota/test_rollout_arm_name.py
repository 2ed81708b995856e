"""A phased rollout's single arm has one name, ``main``, everywhere an operator meets it:
the rollout's device rows (admin, API), /metrics' rollout gauges and model histograms, the
telemetry store and its summary API, and the telemetry gates' source. It was ``main`` in
the admin, ``none`` in /metrics and ``""`` in the telemetry summary."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from django.test import Client
from prometheus_client import REGISTRY
from rollout_helpers import (
    artifact,
    devices,
    evaluate,
    phased,
    report,
    use_own_director_key,
    user,
)

from device_agent.protocol.messages import Phase, TelemetryBatch, TelemetrySample
from fleet.auth import SCOPE_USER
from fleet.identifiers import PHASED_ARM
from fleet.services import api_token_create
from ota.gates import PHASED_BASELINE, TelemetryQuery
from ota.rollout_config import phased_arms
from ota.rollout_selectors import rollout_arm_progress
from telemetry import fleet_collector
from telemetry.ingest import TelemetryIngest
from telemetry.models import Granularity
from telemetry.rollups import rollups_compute
from telemetry.selectors import rollout_arm_device_values

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _scrape_lines(name: str) -> list[dict[str, str]]:
    return [
        dict(s.labels) for family in REGISTRY.collect() for s in family.samples if s.name == name
    ]


def test_a_phased_rollouts_arm_is_main_everywhere() -> None:
    assert PHASED_ARM == "main"
    # given a running phased rollout of 2 devices, one of which committed
    artifact("2.0.0")
    fleet = devices(2)
    rollout = phased()
    evaluate(rollout)
    report(fleet[0], rollout, Phase.COMMITTED)
    evaluate(rollout)

    # then its device rows (what the admin and the API list) say main
    reader = user("reader", "ota.view_rollout", "fleet.view_device", "telemetry.view_rollup")
    token = api_token_create(user=reader, name="dashboard", scopes=[SCOPE_USER])[1]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    listed = client.get(f"/api/v1/rollouts/{rollout.public_id}/devices").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert {row["arm"] for row in rows} == {"main"}

    # and so do the rollout gauges /metrics exports
    progress = rollout_arm_progress()
    assert [p.arm for p in progress] == ["main"]
    families = fleet_collector._families_from_rollouts(progress)
    arms = {s.labels["arm"] for family in families for s in family.samples if "arm" in s.labels}
    assert arms == {"main"}

    # when the device sends telemetry tagged as its desired entry says: the rollout, no arm
    now = datetime.now(UTC).replace(microsecond=0)
    ingest = TelemetryIngest(
        max_age=timedelta(days=7), max_future=timedelta(minutes=10), model_cache_seconds=0
    )
    with transaction.atomic():
        ingest.add(
            device=fleet[0],
            batch=TelemetryBatch(
                samples=(
                    TelemetrySample(
                        model="kws",
                        version="2.0.0",
                        rollout_id=rollout.public_id,
                        arm=None,
                        metrics={"latency_ms": 12.0},
                        ts=now,
                    ),
                )
            ),
            received_at=now,
        )
        ingest.flush()

    rollups_compute(
        granularity=Granularity.MINUTE,
        start=now - timedelta(minutes=1),
        end=now + timedelta(minutes=1),
    )

    # then the model histogram, the summary API and the gates' source call it main too
    histogram = [
        labels
        for labels in _scrape_lines("fleet_model_latency_seconds_count")
        if labels["model"] == "kws" and labels["version"] == "2.0.0"
    ]
    assert {labels["arm"] for labels in histogram} == {"main"}
    summary = client.get(
        f"/api/v1/telemetry/rollouts/{rollout.public_id}/summary",
        {"metric": "latency_ms", "since": (now - timedelta(minutes=5)).isoformat()},
    ).json()
    assert set(summary["arms"]) == {"main"}, json.dumps(summary)
    values = rollout_arm_device_values(
        TelemetryQuery(
            rollout_id=rollout.public_id,
            model="kws",
            metric="latency_ms",
            statistic="mean",
            since=now - timedelta(minutes=5),
            arms=phased_arms("2.0.0"),
            baseline=PHASED_BASELINE,
        )
    )
    assert values == {"main": [12.0], PHASED_BASELINE: []}
