"""Gates: install failure rate (only after min_finished), server-side timeouts, and the
telemetry comparison (Mann-Whitney U on per-device values, with an effect size)."""

import itertools
import random
from collections.abc import Mapping, Sequence
from datetime import timedelta

import pytest
from rollout_helpers import (
    artifact,
    devices,
    evaluate,
    fresh,
    later,
    phased,
    report,
    rows,
    use_own_director_key,
)

from device_agent.protocol.messages import Phase
from ota.gates import (
    GateContext,
    GateStatus,
    InstallFailureGate,
    Outcomes,
    TelemetryGate,
    TelemetryQuery,
    compare,
    mann_whitney_greater,
    telemetry_source,
)
from ota.models import RolloutAuditEvent, RolloutStatus
from ota.rollout_config import Arm, TelemetryGateConfig

MAIN = (Arm(name="main", version="2.0.0"),)


def _ctx(outcomes: Mapping[str, Outcomes], arms: tuple[Arm, ...] = MAIN) -> GateContext:
    return GateContext(
        rollout_id="r-1",
        model="kws",
        arms=arms,
        baseline="baseline",
        outcomes=outcomes,
        since=None,
        now=later(),
    )


# --- install failure rate --------------------------------------------------------------------


def test_failure_rate_is_not_judged_before_min_finished():
    gate = InstallFailureGate(max_failure_rate=0.1, min_finished=10)
    # 5 of 9 failed: alarming, but too few finished to judge
    result = gate.check(_ctx({"main": Outcomes(succeeded=4, failed=3, timed_out=2, in_flight=20)}))
    assert result.status is GateStatus.INSUFFICIENT_DATA
    assert not result.blocks_advance
    assert result.figures["arms"]["main"]["finished"] == 9


def test_failure_rate_breaches_above_the_maximum_once_judged():
    gate = InstallFailureGate(max_failure_rate=0.1, min_finished=10)
    ok = gate.check(_ctx({"main": Outcomes(succeeded=9, failed=1)}))  # 10 %: not above
    assert ok.status is GateStatus.OK
    # failed and timed out both count, over finished (in flight does not)
    bad = gate.check(_ctx({"main": Outcomes(succeeded=8, failed=1, timed_out=1, in_flight=50)}))
    assert bad.status is GateStatus.BREACH
    assert bad.blocks_advance
    assert "2 of 10 failed" in bad.detail
    assert bad.figures["arms"]["main"]["failure_rate"] == 0.2


def test_failure_rate_is_judged_per_arm():
    arms = (Arm(name="A", version="1.0.0", baseline=True), Arm(name="B", version="2.0.0"))
    gate = InstallFailureGate(max_failure_rate=0.2, min_finished=5)
    # overall 6 / 60 = 10 %, but arm B alone fails 60 %
    result = gate.check(
        _ctx({"A": Outcomes(succeeded=50), "B": Outcomes(succeeded=4, failed=6)}, arms)
    )
    assert result.status is GateStatus.BREACH
    assert result.detail.startswith("arm B:")


# --- Mann-Whitney U ----------------------------------------------------------------------------

# Reference values from scipy.stats.mannwhitneyu(x, y, alternative=..., method="asymptotic",
# use_continuity=True) (SciPy 1.16), computed once outside this repository.
X = [25.609986, 19.971571, 32.863509, 30.150227, 17.556377, 32.687499, 14.346045, 18.457367,
     15.829279, 14.053902, 33.861142, 22.645065, 13.601076, 33.996211, 33.725202, 39.921754,
     14.480911, 20.263515, 13.173383, 28.458579, 12.215334, 30.815781, 17.231656, 20.616643,
     20.566854]  # fmt: skip
Y = [24.354388, 22.465828, 26.727824, 36.716313, 33.851869, 29.928659, 27.077414, 17.283128,
     38.119837, 26.400007, 26.050341, 24.687298, 21.109404, 26.314753, 28.287259, 14.396061,
     8.490341, 27.926546, 30.991448, 12.010504, 21.873272, 14.966281, 17.935837, 32.017023,
     19.450785, 14.398541, 22.946516, 24.748796, 36.461096, 10.351726]  # fmt: skip
XT = [1, 2, 2, 3, 3, 3, 4, 5, 5, 6, 7, 7, 7, 8, 9, 10, 10, 11, 12, 12]
YT = [2, 3, 4, 4, 5, 6, 6, 7, 8, 8, 9, 9, 10, 11, 12, 13, 13, 14, 15, 15, 15, 16]


def test_mann_whitney_matches_scipy():
    u, p = mann_whitney_greater(X, Y)
    assert (u, p) == (344.0, pytest.approx(0.7027918423144333, abs=1e-12))
    assert mann_whitney_greater(Y, X)[1] == pytest.approx(0.30308643221647463, abs=1e-12)
    # with many ties (the tie correction matters)
    u, p = mann_whitney_greater(XT, YT)
    assert (u, p) == (133.5, pytest.approx(0.9859612517166326, abs=1e-12))
    assert mann_whitney_greater(YT, XT)[1] == pytest.approx(0.014967166705566746, abs=1e-12)


def test_mann_whitney_normal_approximation_is_close_to_the_exact_test():
    # exact one-sided p by enumerating every split of 8 + 8 distinct values
    rng = random.Random(3)  # noqa: S311 - reproducible test data
    x = [rng.gauss(10.8, 1) for _ in range(8)]
    y = [rng.gauss(10, 1) for _ in range(8)]
    pooled = x + y
    u_observed = mann_whitney_greater(x, y)[0]
    ranks = {v: i + 1 for i, v in enumerate(sorted(pooled))}
    extreme = total = 0
    for chosen in itertools.combinations(pooled, 8):
        total += 1
        u = sum(ranks[v] for v in chosen) - 8 * 9 / 2
        extreme += u >= u_observed
    assert mann_whitney_greater(x, y)[1] == pytest.approx(extreme / total, abs=0.02)


def test_mann_whitney_without_variation_gives_no_evidence():
    assert mann_whitney_greater([5.0] * 30, [5.0] * 30)[1] == 1.0


# --- compare --------------------------------------------------------------------------------------


def _lognormal(mu: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    return [rng.lognormvariate(mu, 0.3) for _ in range(n)]


def test_compare_flags_a_clearly_slower_arm():
    baseline = _lognormal(3.0, 60, 1)
    slower = [v * 1.3 for v in _lognormal(3.0, 60, 2)]  # 30 % slower per device
    c = compare(slower, baseline, better="lower", alpha=0.01, min_devices=20, max_worse=0.1)
    assert c.enough
    assert c.worse
    assert c.p_worse is not None
    assert c.p_worse < 0.01
    assert c.relative_change is not None
    assert c.relative_change > 0.1


def test_compare_ignores_a_significant_but_harmless_change():
    # 2 % slower on 2 000 devices is significant, and below the 10 % tolerance
    baseline = _lognormal(3.0, 2000, 1)
    slightly = [v * 1.02 for v in _lognormal(3.0, 2000, 2)]
    c = compare(slightly, baseline, better="lower", alpha=0.01, min_devices=20, max_worse=0.1)
    assert not c.worse


def test_compare_is_robust_to_an_outlier_device():
    # one throttled device 50x slower would move a mean (Welch's t), not the ranks
    baseline = _lognormal(3.0, 40, 1)
    same = _lognormal(3.0, 39, 2) + [1000.0]
    c = compare(same, baseline, better="lower", alpha=0.01, min_devices=20, max_worse=0.1)
    assert not c.worse


def test_compare_direction_for_higher_is_better():
    baseline = [0.9 + 0.001 * i for i in range(40)]
    worse = [0.6 + 0.001 * i for i in range(40)]
    c = compare(worse, baseline, better="higher", alpha=0.01, min_devices=20, max_worse=0.05)
    assert c.worse
    assert not c.better
    improved = compare(baseline, worse, better="higher", alpha=0.01, min_devices=20)
    assert improved.better
    assert not improved.worse


def test_compare_needs_the_minimum_number_of_devices():
    c = compare([100.0] * 19, [1.0] * 50, better="lower", alpha=0.01, min_devices=20)
    assert not c.enough
    assert not c.worse
    assert c.to_dict()["p_worse"] is None


# --- telemetry gate and its hook ------------------------------------------------------------


class FakeTelemetry:
    """A TelemetrySource with fixed per-device values; records the queries."""

    def __init__(self, values: Mapping[str, Sequence[float]]) -> None:
        self.values = values
        self.queries: list[TelemetryQuery] = []

    def __call__(self, query: TelemetryQuery) -> Mapping[str, Sequence[float]]:
        self.queries.append(query)
        return self.values


def test_telemetry_gate_breaches_when_the_arm_is_worse():
    source = FakeTelemetry(
        {"main": [v * 1.5 for v in _lognormal(3, 30, 2)], "baseline": _lognormal(3, 30, 1)}
    )
    config = TelemetryGateConfig(metric="latency_ms", statistic="p95", better="lower")
    result = TelemetryGate(config, source).check(_ctx({}))
    assert result.status is GateStatus.BREACH
    assert result.gate == "telemetry:latency_ms:p95"
    assert "arm main: median p95 latency_ms" in result.detail
    (query,) = source.queries
    assert (query.rollout_id, query.metric, query.statistic, query.baseline) == (
        "r-1",
        "latency_ms",
        "p95",
        "baseline",
    )


def test_telemetry_gate_without_data_holds_a_stage_only_when_required():
    empty = FakeTelemetry({})
    optional = TelemetryGate(TelemetryGateConfig(metric="latency_ms"), empty).check(_ctx({}))
    assert optional.status is GateStatus.INSUFFICIENT_DATA
    assert not optional.blocks_advance
    required = TelemetryGateConfig(metric="latency_ms", required=True)
    assert TelemetryGate(required, empty).check(_ctx({})).blocks_advance


def test_the_hook_defaults_to_no_telemetry_and_takes_a_dotted_path(settings):
    settings.FLEET_ROLLOUT_TELEMETRY_SOURCE = ""
    assert telemetry_source()(TelemetryQuery("r-1", "kws", "x", "mean", None, MAIN, "b")) == {}
    settings.FLEET_ROLLOUT_TELEMETRY_SOURCE = "test_rollout_gates.SLOW_SOURCE"
    assert telemetry_source() is SLOW_SOURCE


SLOW_SOURCE = FakeTelemetry(
    {"main": [v * 2 for v in _lognormal(3, 30, 2)], "baseline": _lognormal(3, 30, 1)}
)


# --- the engine ---------------------------------------------------------------------------


@pytest.fixture
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


@pytest.mark.django_db
@pytest.mark.usefixtures("_keys")
def test_engine_pauses_on_failure_rate_only_after_min_finished():
    artifact("2.0.0")
    fleet = devices(20)
    rollout = phased(policy={"max_failure_rate": 0.2, "min_finished": 10, "on_breach": "pause"})
    evaluate(rollout)

    # 4 failures among the first 5 finished: not judged yet
    for device in fleet[:4]:
        report(device, rollout, Phase.ROLLED_BACK)
    report(fleet[4], rollout, Phase.COMMITTED)
    assert evaluate(rollout).status == RolloutStatus.RUNNING

    # 10 finished, 4 failed = 40 % > 20 %: paused by the engine, figures audited
    for device in fleet[5:10]:
        report(device, rollout, Phase.COMMITTED)
    result = evaluate(rollout)
    assert result.status == RolloutStatus.PAUSED
    audit = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk").last()
    assert audit is not None
    assert audit.actor_name == "engine"
    assert audit.reason.startswith("gate breach: install_failure_rate: arm main: 4 of 10 failed")
    assert audit.figures["gates"][0]["figures"]["arms"]["main"]["failure_rate"] == 0.4
    failed = {
        r.device.device_id: (r.state, r.last_phase, r.last_code)
        for r in rows(rollout, state="failed")
    }
    assert failed[fleet[0].device_id] == ("failed", "rolled_back", "health_check_failed")


@pytest.mark.django_db
@pytest.mark.usefixtures("_keys")
def test_engine_times_out_devices_stuck_in_one_phase():
    artifact("2.0.0")
    stuck, silent, moving = devices(3)
    rollout = phased(
        policy={"device_timeout_minutes": 10, "min_finished": 2, "max_failure_rate": 0.9}
    )
    t0 = later()
    evaluate(rollout, t0)
    report(stuck, rollout, Phase.DOWNLOADING, at=t0 + timedelta(seconds=5))

    # within the timeout nothing times out
    evaluate(rollout, t0 + timedelta(minutes=9))
    assert {r.state for r in rows(rollout)} == {"notified", "in_progress"}

    # the moving device keeps reporting progress; the others do not
    report(moving, rollout, Phase.TRIAL, at=t0 + timedelta(minutes=9))
    result = evaluate(rollout, t0 + timedelta(minutes=11))
    by_id = {r.device.device_id: r for r in rows(rollout)}
    assert by_id[silent.device_id].state == "timed_out"
    assert by_id[stuck.device_id].state == "timed_out"
    assert (by_id[stuck.device_id].last_phase, by_id[stuck.device_id].last_code) == (
        "downloading",
        "timeout",
    )
    assert by_id[moving.device_id].state == "in_progress"
    # timed out counts as failed: 2 of 2 finished > 90 %
    assert result.status == RolloutStatus.PAUSED


@pytest.mark.django_db
@pytest.mark.usefixtures("_keys")
def test_engine_pauses_on_a_telemetry_breach_through_the_hook(settings):
    settings.FLEET_ROLLOUT_TELEMETRY_SOURCE = "test_rollout_gates.SLOW_SOURCE"
    artifact("2.0.0")
    devices(3)
    rollout = phased(
        policy={
            "telemetry_gates": [{"metric": "latency_ms", "statistic": "p95", "min_devices": 20}]
        }
    )

    result = evaluate(rollout)

    assert result.status == RolloutStatus.PAUSED
    assert "telemetry:latency_ms:p95" in result.note
    query = SLOW_SOURCE.queries[-1]
    assert (query.rollout_id, query.model, query.baseline) == (rollout.public_id, "kws", "baseline")
    assert [a.name for a in query.arms] == ["main"]
    assert fresh(rollout).gate_figures["telemetry"]["results"][0]["status"] == "breach"
