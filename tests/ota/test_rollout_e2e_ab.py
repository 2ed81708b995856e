"""End to end (issue 6): A/B rollouts judged on the latency the devices' applications
report, through PostgreSQL, Mosquitto, the bridge, a Celery worker on Redis and 20 real
agents, each running a simulated application that runs the installed ONNX model through
onnxruntime and hands its measured latency to the agent's local metrics API."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rollout_onnx import chain_onnx, selftest_meta
from rollout_system import FleetSystem, wait_until
from service_check import require_module

DEVICES = 20

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetSystem]:
    # the devices' simulated application runs the model through onnxruntime
    require_module("onnxruntime", "pip install -e '.[dev]' (deploy/dev/venv.sh)")
    fleet = FleetSystem(
        tmp_path_factory.mktemp("e2e-ab"),
        devices=DEVICES,
        agent_args=[
            "--simulate-app",
            "detector",
            "--simulate-app-interval",
            "0.5",
        ],
        env={"FLEET_ROLLOUT_TELEMETRY_INTERVAL_SECONDS": "3"},
    )
    with fleet.running():
        yield fleet


def _publish(system: FleetSystem, tmp_path: Path, version: str, *, layers: int, bias: float) -> str:
    data, selftest = chain_onnx(layers=layers, bias=bias)
    path = tmp_path / f"detector-{version}.onnx"
    path.write_bytes(data)
    return system.publish(path, name="detector", version=version, meta=[selftest_meta(selftest)])


def _ab(system: FleetSystem, a: str, b: str, promotion: dict[str, object]) -> str:
    rollout = system.rollout_create(
        model="detector",
        strategy="ab",
        arms=[
            {"name": "A", "version": a, "weight": 50, "baseline": True},
            {"name": "B", "version": b, "weight": 50},
        ],
        stages=[{"percent": 100}],
        selection={"all": True},
        policy={"min_finished": 2, "rate_per_minute": 600, "promotion": promotion},
    )
    system.post(f"/api/v1/rollouts/{rollout['id']}/start", {"reason": "e2e"})
    return str(rollout["id"])


def _promoted(system: FleetSystem, rollout_id: str, timeout: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        rollout = system.rollout(rollout_id)
        return rollout if rollout["status"] in ("completed", "paused", "aborted") else None

    try:
        return wait_until(done, f"{rollout_id} to finish", timeout)
    except AssertionError:
        print(system.rollout(rollout_id)["gate_figures"])
        print(system.diagnostics())
        raise


@pytest.fixture(scope="module")
def published(system: FleetSystem, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """detector 1.0.0 (one MatMul), 2.0.0 (2 000 of them: clearly slower), 1.1.0 (one).

    2.0.0's MatMuls must outweigh the simulated application's fixed cost per inference
    (about 0.13 ms on a fast machine) by far: with 300 its median latency came out at 1.96
    times the baseline's there, under the test's "more than twice"."""
    tmp = tmp_path_factory.mktemp("models")
    system.model_register("detector")
    return {
        "1.0.0": _publish(system, tmp, "1.0.0", layers=1, bias=0.5),
        "2.0.0": _publish(system, tmp, "2.0.0", layers=2000, bias=0.75),
        "1.1.0": _publish(system, tmp, "1.1.0", layers=1, bias=1.25),
    }


def _arms(system: FleetSystem, rollout_id: str) -> dict[str, str]:
    return {d["device"]: d["arm"] for d in system.rollout_devices(rollout_id)}


def test_a_clearly_slower_arm_loses_and_the_baseline_is_promoted(
    system: FleetSystem, published: dict[str, str]
):
    # when: arm B runs a model two thousand times heavier than the baseline A's
    rollout_id = _ab(
        system,
        "1.0.0",
        "2.0.0",
        {
            "mode": "auto",
            "metric": "latency_ms",
            "statistic": "mean",
            "better": "lower",
            "min_devices": 5,
            "alpha": 0.05,
        },
    )
    rollout = _promoted(system, rollout_id)

    # then: the devices' own latency reports made B lose; A went to every device
    figures = rollout["gate_figures"]
    assert rollout["status"] == "completed", figures
    assert rollout["promoted_arm"] == "A", figures
    assert figures["promotion_verdict"] == "baseline"
    (comparison,) = figures["promotion"]
    assert comparison["arm"] == "B"
    assert comparison["worse"] is True
    assert comparison["arm_median"] > 2 * comparison["baseline_median"], comparison
    assert comparison["n_arm"] >= 5
    assert comparison["n_baseline"] >= 5
    arms = _arms(system, rollout_id)
    assert set(arms.values()) == {"A", "B"}
    devices = system.device_ids()
    assert {d: system.installed(d, "detector") for d in devices} == dict.fromkeys(
        devices, published["1.0.0"]
    )
    audit = system.audit(rollout_id)
    promotion = next(a for a in audit if "promotion" in a["reason"])
    assert promotion["actor_name"] == "engine"
    assert "the baseline A beats every other arm" in promotion["reason"]
    # the latency samples behind it are in the database, tagged with the arms
    by_arm = dict(
        system.query(
            "SELECT arm, count(DISTINCT device_id) FROM telemetry_sample "
            "WHERE rollout_id = %s AND metric = 'latency_ms' GROUP BY arm",
            rollout_id,
        )
    )
    assert by_arm.get("A", 0) >= 5
    assert by_arm.get("B", 0) >= 5


def test_with_no_difference_it_is_inconclusive_and_the_policy_keeps_the_baseline(
    system: FleetSystem, published: dict[str, str]
):
    # when: both arms run equally heavy models, and the policy keeps the baseline when the
    # minimum of devices shows no difference
    rollout_id = _ab(
        system,
        "1.0.0",
        "1.1.0",
        {
            "mode": "auto",
            "metric": "latency_ms",
            "better": "lower",
            "min_devices": 5,
            "alpha": 0.001,
            "on_inconclusive": "baseline",
        },
    )
    rollout = _promoted(system, rollout_id)

    # then: no arm was better or worse with at least the minimum of devices in each
    figures = rollout["gate_figures"]
    assert rollout["status"] == "completed", figures
    assert figures["promotion_verdict"] == "inconclusive", figures
    (comparison,) = figures["promotion"]
    assert comparison["enough"] is True
    assert comparison["n_arm"] >= 5
    assert comparison["n_baseline"] >= 5
    assert comparison["better"] is False
    assert comparison["worse"] is False
    assert rollout["promoted_arm"] == "A"
    devices = system.device_ids()
    assert {d: system.installed(d, "detector") for d in devices} == dict.fromkeys(
        devices, published["1.0.0"]
    )
    audit = system.audit(rollout_id)
    promotion = next(a for a in audit if "promotion" in a["reason"])
    assert "the policy keeps the baseline" in promotion["reason"]
