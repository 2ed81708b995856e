"""A/B rollouts: sticky arms by weight, entries tagged with the arm, promotion of the
winner to every device by an operator or by rule."""

import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from rollout_helpers import (
    ab,
    artifact,
    commit_all,
    desired_entry,
    devices,
    evaluate,
    fresh,
    later,
    operator,
    phased,
    rows,
    use_own_director_key,
)

from device_agent.protocol.errors import ErrorCode
from fleet.errors import ServiceError
from ota import rollouts
from ota.gates import TelemetryQuery
from ota.models import RolloutAuditEvent, RolloutStatus

pytestmark = pytest.mark.django_db
ARMS = [
    {"name": "A", "version": "1.0.0", "weight": 50, "baseline": True},
    {"name": "B", "version": "2.0.0", "weight": 50},
]


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)
    artifact("1.0.0")
    artifact("2.0.0")


def test_arms_are_sticky_weighted_and_tagged_in_the_desired_state():
    devices(200)
    rollout = ab(arms=ARMS, stages=[{"percent": 20}, {"percent": 60}])
    t0 = later()
    evaluate(rollout, t0)

    # exposed devices get their arm's version, tagged with rollout and arm
    exposed = rows(rollout, state="notified")
    for row in exposed:
        entry = desired_entry(row.device)
        assert entry is not None
        assert (entry["rollout_id"], entry["arm"]) == (rollout.public_id, row.arm)
        assert entry["version"] == {"A": "1.0.0", "B": "2.0.0"}[row.arm]
    arms = Counter(r.arm for r in rows(rollout))
    assert 70 < arms["B"] < 130  # weights 50/50 over 200 devices
    assert set(Counter(r.arm for r in exposed)) == {"A", "B"}

    # the next stage keeps everyone's arm
    before = {r.device_id: r.arm for r in rows(rollout)}
    commit_all(rollout)
    evaluate(rollout, later(1, base=t0))
    evaluate(rollout, later(2, base=t0))
    assert fresh(rollout).current_stage == 1
    assert {r.device_id: r.arm for r in rows(rollout)} == before


def test_the_last_stage_waits_for_promotion_which_deploys_the_winner_everywhere():
    fleet = devices(40)
    rollout = ab(arms=ARMS, stages=[{"percent": 50}])
    t0 = later()
    evaluate(rollout, t0)
    commit_all(rollout)
    waiting = evaluate(rollout, later(1, base=t0))
    assert waiting.note == "awaiting promotion of an arm"
    assert fresh(rollout).status == RolloutStatus.RUNNING

    # when an operator promotes B
    rollouts.rollout_promote(rollout=rollout, arm="B", by=operator(), reason="B wins")
    evaluate(rollout, later(2, base=t0))

    # then every device gets 2.0.0, tagged with arm B, also the unexposed half
    assert {(desired_entry(d) or {}).get("version") for d in fleet} == {"2.0.0"}
    assert {(desired_entry(d) or {}).get("arm") for d in fleet} == {"B"}
    commit_all(rollout)
    assert evaluate(rollout, later(3, base=t0)).status == RolloutStatus.COMPLETED
    promoted = fresh(rollout)
    assert (promoted.promoted_arm, promoted.version) == ("B", "2.0.0")
    audit = RolloutAuditEvent.objects.filter(rollout=rollout, reason="B wins").get()
    assert (audit.actor_name, audit.figures["arm"]) == ("operator", "B")


def test_promotion_is_refused_when_it_makes_no_sense():
    devices(2)
    rollout = ab(arms=ARMS)
    with pytest.raises(ServiceError) as unknown:
        rollouts.rollout_promote(rollout=rollout, arm="Z", by=operator())
    assert unknown.value.code == ErrorCode.NOT_FOUND
    rollouts.rollout_promote(rollout=rollout, arm="A", by=operator())
    with pytest.raises(ServiceError) as twice:
        rollouts.rollout_promote(rollout=rollout, arm="B", by=operator())
    assert twice.value.code == ErrorCode.CONFLICT
    rollouts.rollout_abort(rollout=rollout, by=operator(), reason="x")
    evaluate(rollout)
    single = phased(version="2.0.0")
    with pytest.raises(ServiceError) as not_ab:
        rollouts.rollout_promote(rollout=single, arm="main", by=operator())
    assert "not an A/B rollout" in not_ab.value.detail


def _confidence(values: Mapping[str, Sequence[float]]):
    def source(query: TelemetryQuery) -> Mapping[str, Sequence[float]]:
        return values if query.metric == "confidence" else {}

    return source


rng = random.Random(11)  # noqa: S311 - reproducible test data
B_IS_BETTER = _confidence(
    {
        "A": [rng.gauss(0.80, 0.03) for _ in range(40)],
        "B": [rng.gauss(0.86, 0.03) for _ in range(40)],
    }
)


def test_automatic_promotion_picks_the_arm_that_beats_the_baseline(settings):
    settings.FLEET_ROLLOUT_TELEMETRY_SOURCE = "test_rollout_ab.B_IS_BETTER"
    devices(10)
    rollout = ab(
        arms=ARMS,
        stages=[{"percent": 100}],
        policy={
            "promotion": {
                "mode": "auto",
                "metric": "confidence",
                "better": "higher",
                "min_devices": 20,
            }
        },
    )
    t0 = later()
    evaluate(rollout, t0)
    commit_all(rollout)

    evaluate(rollout, later(1, base=t0))

    promoted = fresh(rollout)
    assert promoted.promoted_arm == "B"
    comparison = promoted.gate_figures["promotion"][0]
    assert (comparison["arm"], comparison["better"]) == ("B", True)
    audit = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk").last()
    assert audit is not None
    assert audit.actor_name == "engine"
    assert audit.reason.startswith("automatic promotion: arm B beats the baseline")


B_IS_WORSE = _confidence(
    {
        "A": [rng.gauss(0.86, 0.03) for _ in range(40)],
        "B": [rng.gauss(0.70, 0.03) for _ in range(40)],
    }
)
NO_DIFFERENCE = _confidence(
    {
        "A": [0.8 + 0.001 * (i % 7) for i in range(40)],
        "B": [0.8 + 0.001 * ((i + 3) % 7) for i in range(40)],
    }
)
TOO_FEW = _confidence({"A": [0.8] * 40, "B": [0.7, 0.71, 0.69]})


def _auto_ab(on_inconclusive: str = "wait"):
    devices(10)
    rollout = ab(
        arms=ARMS,
        policy={
            "promotion": {
                "mode": "auto",
                "metric": "confidence",
                "better": "higher",
                "min_devices": 20,
                "on_inconclusive": on_inconclusive,
            }
        },
    )
    t0 = later()
    evaluate(rollout, t0)
    commit_all(rollout)
    evaluate(rollout, later(1, base=t0))
    return fresh(rollout)


def test_the_baseline_is_promoted_when_every_challenger_is_worse(settings):
    settings.FLEET_ROLLOUT_TELEMETRY_SOURCE = "test_rollout_ab.B_IS_WORSE"
    rollout = _auto_ab()
    assert rollout.promoted_arm == "A"
    assert rollout.gate_figures["promotion_verdict"] == "baseline"
    comparison = rollout.gate_figures["promotion"][0]
    assert (comparison["arm"], comparison["worse"], comparison["better"]) == ("B", True, False)
    audit = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk").last()
    assert audit is not None
    assert audit.reason.startswith("automatic promotion: the baseline A beats every other arm")


@pytest.mark.parametrize(("policy", "promoted"), [("wait", ""), ("baseline", "A")])
def test_no_difference_follows_the_inconclusive_policy(settings, policy, promoted):
    settings.FLEET_ROLLOUT_TELEMETRY_SOURCE = "test_rollout_ab.NO_DIFFERENCE"
    rollout = _auto_ab(policy)
    assert rollout.gate_figures["promotion_verdict"] == "inconclusive"
    assert rollout.promoted_arm == promoted
    assert rollout.status == RolloutStatus.RUNNING


def test_below_the_sample_minimum_nothing_is_decided(settings):
    settings.FLEET_ROLLOUT_TELEMETRY_SOURCE = "test_rollout_ab.TOO_FEW"
    rollout = _auto_ab("baseline")
    assert rollout.gate_figures["promotion_verdict"] == "insufficient_data"
    assert rollout.promoted_arm == ""
