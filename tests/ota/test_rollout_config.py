"""Rollout documents: defaults filled in, what is stored parses back to the same thing,
and malformed input is refused naming the field."""

from typing import Any

import pytest

from fleet.errors import ServiceError
from ota.rollout_config import Policy, Selection, arms_parse, stages_parse


def test_policy_defaults_and_round_trip():
    policy = Policy.from_dict(
        {
            "on_breach": "abort",
            "window": {
                "days": ["sat", "sun"],
                "start": "22:00",
                "end": "04:00",
                "timezone": "Europe/Berlin",
            },
            "telemetry_gates": [{"metric": "latency_ms", "statistic": "p95"}],
            "promotion": {"mode": "auto", "metric": "confidence"},
        }
    )
    assert (policy.max_failure_rate, policy.min_finished, policy.retries) == (0.05, 10, 0)
    assert policy.telemetry_gates[0].alpha == 0.01
    stored = policy.to_dict()
    assert stored["window"]["start"] == "22:00"
    assert Policy.from_dict(stored) == policy


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"on_breach": "explode"}, "policy.on_breach"),
        ({"max_failure_rate": -0.1}, "policy.max_failure_rate"),
        ({"min_finished": 0}, "policy.min_finished"),
        ({"rate_per_minute": 0}, "policy.rate_per_minute"),
        ({"rate_per_minute": 10, "rate_max_per_minute": 5}, "policy.rate_max_per_minute"),
        ({"retries": True}, "policy.retries"),
        ({"jitter": 1}, "policy.jitter"),
        ({"telemetry_gates": [{"metric": "bad name"}]}, "policy.telemetry_gates[0].metric"),
        ({"telemetry_gates": [{"metric": "x", "alpha": 0}]}, "policy.telemetry_gates[0].alpha"),
        ({"promotion": {"mode": "auto"}}, "policy.promotion.metric"),
    ],
)
def test_policy_refusals_name_the_field(policy, field):
    with pytest.raises(ServiceError) as refused:
        Policy.from_dict(policy)
    assert refused.value.detail.startswith(field)


def test_stages_arms_and_selection():
    assert [s.percent for s in stages_parse(None, require_full=True)] == [100]
    assert stages_parse([{"percent": 0.5}, {"percent": 5}], require_full=False)[0].percent == 0.5
    for bad in ([], [{"percent": 0}], [{"percent": 101}], [{"percent": 10, "bake": 1}]):
        with pytest.raises(ServiceError):
            stages_parse(bad, require_full=False)
    arms: list[dict[str, Any]] = [
        {"name": "A", "version": "1.0.0", "baseline": True},
        {"name": "B", "version": "2.0.0"},
    ]
    assert [a.weight for a in arms_parse(arms)] == [1.0, 1.0]
    for bad_arms in (
        arms[:1],
        [arms[0], {**arms[1], "baseline": True}],
        [arms[0], {**arms[1], "name": "A"}],
        [arms[0], {**arms[1], "version": "two"}],
        [arms[0], {**arms[1], "weight": 0}],
    ):
        with pytest.raises(ServiceError):
            arms_parse(bad_arms)
    assert Selection.from_dict({"tags": ["cam"], "hardware": ["esp32s3-int8"]}).tags == ("cam",)
    with pytest.raises(ServiceError):
        Selection.from_dict({"all": True, "groups": ["x"]})
    with pytest.raises(ServiceError):
        Selection.from_dict({"devices": ["not a device id"]})
