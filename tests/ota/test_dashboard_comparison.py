"""The rollout page draws the engine's A/B and quality-gate comparisons per arm (median
and quartiles as inline SVG) and says the result in words, with the engine's own figures."""

import random
import re
import statistics
from typing import Any

import pytest
from django.test import Client
from django.utils.html import escape
from rollout_helpers import ab, artifact, devices, evaluate, fresh, use_own_director_key, user

from ota.gates import compare
from ota.models import Rollout

pytestmark = pytest.mark.django_db

_rng = random.Random(7)  # noqa: S311 - test data, not secrets
A_VALUES = [_rng.lognormvariate(0, 0.2) for _ in range(30)]
B_VALUES = [_rng.lognormvariate(0, 0.2) * 1.31 for _ in range(30)]
SOURCE_VALUES = {"A": A_VALUES, "B": B_VALUES}


def SOURCE(query):  # noqa: N802 - a TelemetrySource by dotted path
    return SOURCE_VALUES


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _page(rollout_pk: int) -> str:
    client = Client()
    client.force_login(user("op", "ota.view_rollout", "fleet.view_device", staff=True))
    response = client.get(f"/admin/ota/rollout/{rollout_pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def _a_b_rollout(n_devices: int, policy: dict[str, Any]) -> Rollout:
    """An A/B rollout of 1.0.0 (A, the baseline) against 2.0.0 (B) on `n_devices`."""
    artifact("1.0.0")
    artifact("2.0.0")
    devices(n_devices)
    return ab(
        arms=[
            {"name": "A", "version": "1.0.0", "baseline": True},
            {"name": "B", "version": "2.0.0"},
        ],
        policy=policy,
    )


def _medians(page: str) -> dict[str, float]:
    return {
        arm: float(median)
        for arm, median in re.findall(r'data-arm="(\w+)" data-median="([^"]+)"', page)
    }


def test_a_quality_gate_breach_is_drawn_per_arm_and_said_in_words(settings):
    settings.FLEET_ROLLOUT_TELEMETRY_SOURCE = "test_dashboard_comparison.SOURCE"
    rollout = _a_b_rollout(
        4,
        {
            "telemetry_gates": [
                {"metric": "latency_ms", "statistic": "p95", "max_relative_change": 0.1}
            ]
        },
    )
    evaluate(rollout)

    (cmp,) = fresh(rollout).gate_figures["gates"][1]["figures"]["comparisons"]
    assert cmp["worse"]
    page = _page(rollout.pk)

    expected = (
        f"B's p95 latency_ms is {cmp['relative_change'] * 100:.0f} % higher than A's (worse), "
        f"p = {cmp['p_worse']:.2g}: B loses."
    )
    assert escape(expected) in page
    medians = _medians(page)
    assert medians == {
        "A": float(f"{cmp['baseline_median']:g}"),
        "B": float(f"{cmp['arm_median']:g}"),
    }
    assert medians["A"] == pytest.approx(statistics.median(A_VALUES), rel=1e-5)
    q1, _, q3 = statistics.quantiles(B_VALUES, n=4, method="inclusive")
    assert (cmp["arm_q1"], cmp["arm_q3"]) == (round(q1, 6), round(q3, 6))
    assert f"B: quartiles {cmp['arm_q1']:.4g} to {cmp['arm_q3']:.4g}" in page
    assert "{&quot;" not in page  # no JSON shown
    assert '{"' not in page


def test_automatic_promotion_names_the_winner(settings):
    rollout = _a_b_rollout(
        4, {"promotion": {"mode": "auto", "metric": "latency_ms", "better": "higher"}}
    )
    # What the engine stores for automatic promotion: compare()'s figures, per challenger.
    cmp = compare(
        B_VALUES, A_VALUES, better="higher", alpha=0.05, min_devices=10, arm="B", baseline="A"
    )
    rollout.gate_figures = {**rollout.gate_figures, "promotion": [cmp.to_dict()]}
    rollout.save(update_fields=["gate_figures"])

    page = _page(rollout.pk)

    assert cmp.better
    assert cmp.p_better is not None
    assert cmp.relative_change is not None
    assert (
        escape(
            f"B's mean latency_ms is {cmp.relative_change * 100:.0f} % higher than A's (better), "
            f"p = {cmp.p_better:.2g}: B wins."
        )
        in page
    )
    assert "Automatic promotion: mean latency_ms (higher is better)" in page


def test_too_few_devices_says_so_and_draws_nothing(settings):
    rollout = _a_b_rollout(2, {"telemetry_gates": [{"metric": "latency_ms"}]})
    evaluate(rollout)  # the default source: no telemetry at all

    page = _page(rollout.pk)

    assert "Not enough devices yet to compare B with A: 0 vs 0 reporting mean latency_ms." in page
    assert "dash-outcome-insufficient_data" in page
    assert "dash-comparison" not in page
