"""Every number and text a rollout takes has an upper bound, documented in the OpenAPI
schema and enforced: ``bake_minutes: 1e18`` was accepted and the engine then raised
OverflowError on every evaluation of that rollout; a 1 MB description was accepted."""

import copy
import json
from typing import Any

import pytest
from api_seed import Seeded, api_seed
from director_keys import own_director_key
from django.test import Client

from ota import engine
from ota.models import Rollout
from ota.rollout_selectors import rollout_get

pytestmark = pytest.mark.django_db

# The documented bounds (docs/api.md), as numbers: the contract, not the code's constants.
MAX_BAKE_MINUTES = 129_600
MAX_DEVICE_TIMEOUT_MINUTES = 43_200
MAX_RATE_PER_MINUTE = 1_000_000
MAX_COUNT = 10**9
MAX_RETRIES = 10
MAX_MIN_DEVICES = 10**6
MAX_ARM_WEIGHT = 1000

PHASED: dict[str, Any] = {
    "model": "kws",
    "strategy": "phased",
    "version": "1.1.0",
    "stages": [{"percent": 50, "bake_minutes": 10}, {"percent": 100}],
    "selection": {"groups": ["canary"]},
    "policy": {
        "telemetry_gates": [{"metric": "latency_ms"}],
        "promotion": {"mode": "operator"},
        "window": {"start": "22:00", "end": "04:00"},
    },
}
AB: dict[str, Any] = {
    "model": "kws",
    "strategy": "ab",
    "arms": [
        {"name": "a", "version": "1.0.0", "baseline": True},
        {"name": "b", "version": "1.1.0"},
    ],
    "selection": {"all": True},
}

# (body, where, the largest value taken, a value over it)
BOUNDS: list[tuple[dict[str, Any], tuple[Any, ...], Any, Any]] = [
    (PHASED, ("stages", 0, "bake_minutes"), MAX_BAKE_MINUTES, 1e18),
    (PHASED, ("stages", 0, "bake_minutes"), MAX_BAKE_MINUTES, MAX_BAKE_MINUTES + 1),
    (PHASED, ("policy", "device_timeout_minutes"), MAX_DEVICE_TIMEOUT_MINUTES, 1e18),
    (PHASED, ("policy", "rate_per_minute"), MAX_RATE_PER_MINUTE, 1e18),
    (PHASED, ("policy", "rate_max_per_minute"), MAX_RATE_PER_MINUTE, 1e18),
    (PHASED, ("policy", "min_finished"), MAX_COUNT, 10**30),
    (PHASED, ("policy", "rate_burst"), MAX_COUNT, 10**30),
    (PHASED, ("policy", "retries"), MAX_RETRIES, MAX_RETRIES + 1),
    (PHASED, ("policy", "telemetry_gates", 0, "max_relative_change"), 100.0, 1e18),
    (PHASED, ("policy", "telemetry_gates", 0, "min_devices"), MAX_MIN_DEVICES, 10**30),
    (PHASED, ("policy", "promotion", "min_relative_change"), 100.0, 1e300),
    (PHASED, ("policy", "window", "timezone"), "America/Argentina/ComodRivadavia", "x" * 5000),
    (PHASED, ("policy", "promotion", "metric"), "latency_ms", "x" * 5000),
    (PHASED, ("selection", "groups", 0), "canary", "g" * 101),
    (PHASED, ("description",), "d" * 2000, "d" * 2001),
    (PHASED, ("description",), "d" * 2000, "d" * 1024 * 1024),
    (AB, ("arms", 1, "weight"), MAX_ARM_WEIGHT, 1e18),
]


@pytest.fixture
def seeded(settings, tmp_path) -> Seeded:
    own_director_key(settings, tmp_path)
    return api_seed()


def _with(body: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node: Any = out
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    return out


def _post(seeded: Seeded, body: dict[str, Any]) -> Any:
    return Client().post(
        "/api/v1/rollouts/",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {seeded.operator_token}"},
    )


@pytest.mark.parametrize(
    ("body", "where", "largest", "over"),
    BOUNDS,
    ids=[f"{'.'.join(map(str, w))}={str(o)[:12]}" for _, w, _, o in BOUNDS],
)
def test_a_value_over_its_bound_is_refused_and_the_bound_itself_taken(
    seeded: Seeded, body: dict[str, Any], where: tuple[Any, ...], largest: Any, over: Any
) -> None:
    before = Rollout.objects.count()
    refused = _post(seeded, _with(body, where, over))
    assert refused.status_code == 400, refused.content[:300]
    error = refused.json()["error"]
    # an over-long name is outside its identifier's alphabet (the identifier rules' code)
    assert error["code"] == ("invalid_identifier" if where[0] == "selection" else "malformed")
    assert str(where[-1]) in error["detail"] or where[0] in error["detail"]
    assert Rollout.objects.count() == before  # nothing half-written

    taken = _post(seeded, _with(body, where, largest))
    assert taken.status_code == 201, taken.content[:300]


def test_the_engine_evaluates_a_rollout_at_every_bound(seeded: Seeded) -> None:
    body = {**copy.deepcopy(PHASED), "model": "vad"}  # kws has a rollout running
    body["stages"] = [{"percent": 50, "bake_minutes": MAX_BAKE_MINUTES}, {"percent": 100}]
    body["policy"].update(
        device_timeout_minutes=MAX_DEVICE_TIMEOUT_MINUTES,
        rate_per_minute=MAX_RATE_PER_MINUTE,
        rate_max_per_minute=MAX_RATE_PER_MINUTE,
        rate_burst=MAX_COUNT,
        min_finished=MAX_COUNT,
    )
    body["policy"]["window"] = {"start": "00:00", "end": "00:00"}
    created = _post(seeded, body)
    assert created.status_code == 201, created.content[:300]
    rollout_id = created.json()["id"]
    started = Client().post(
        f"/api/v1/rollouts/{rollout_id}/start",
        "{}",
        content_type="application/json",
        headers={"Authorization": f"Bearer {seeded.operator_token}"},
    )
    assert started.status_code == 200, started.content[:300]
    engine.rollout_evaluate(rollout_id=rollout_id)  # raised OverflowError with 1e18 minutes
    assert rollout_get(rollout_id).status == "running"
