"""Gates: the checks that let a rollout go on, or stop it (docs/rollouts.md, Gates).

A gate looks at a ``GateContext`` (outcome counts per arm, the rollout's arms, a clock)
and answers ``ok``, ``breach`` or ``insufficient_data`` with the figures behind the
answer; the engine stores the figures and, on a breach, pauses or aborts as the policy
says. Two kinds:

- ``InstallFailureGate``: failed + timed out over finished devices, per arm, judged once
  ``min_finished`` devices of the arm have finished (AWS IoT Jobs' abort criteria with
  their minimum number of executed things), or once every device of the stage has
  finished, on what it has: a small selection never reaches the minimum.
- ``TelemetryGate``: an arm against the baseline on one metric, from per-device values
  that ``telemetry_source()`` (THE HOOK, see below) supplies.

Statistics of the telemetry comparison (``compare``)
----------------------------------------------------
The unit is the **device**, not the sample: a device sends thousands of correlated
samples, and pooling them would make any difference look significant (pseudo-replication).
So the source reduces each device to one value (its mean, or its own p95, over the
rollout so far) and the test compares those per-device values between two arms with a
one-sided **Mann-Whitney U test** (normal approximation with tie and continuity
corrections), breaching only when the arm is significantly worse (p < alpha) **and**
worse by more than ``max_relative_change`` in the median of the per-device values.

Why Mann-Whitney rather than Welch's t: per-device latencies are skewed and heavy-tailed
(one thermally throttled device is ten times slower), and Welch's t on means is pulled
by such outliers either way, its normal approximation poor at 20-50 devices; the rank
test needs no normality, is insensitive to outliers, and loses little power when data
*are* normal (asymptotic relative efficiency 0.955, never below 0.864). Why not a
bootstrap of the fleet p95: it needs raw samples (rollups cannot be resampled), costs
thousands of resamples per evaluation, and a per-device p95 compared by rank answers
the operational question ("did most devices' tail latency get worse?") directly.
Requiring an effect size as well as significance (as Kayenta's canary judge does)
keeps a large fleet from aborting on a statistically real but harmless 1 % change.

Peeking: the gate is re-evaluated continuously, which inflates false alarms above
alpha; the defaults use a stricter alpha (0.01), Bonferroni-split across challenger
arms, and a minimum number of devices per arm. An always-valid sequential test (mSPRT)
would be the principled fix if false pauses turn out to matter.
"""

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from ota.rollout_config import Arm, Better, PromotionConfig, Statistic, TelemetryGateConfig

# The comparison group of a phased rollout: devices of the same model outside it.
PHASED_BASELINE = "baseline"


class GateStatus(StrEnum):
    OK = "ok"
    BREACH = "breach"
    INSUFFICIENT_DATA = "insufficient_data"


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict and the figures behind it (stored in the audit on a breach)."""

    gate: str
    status: GateStatus
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)
    required: bool = False

    @property
    def blocks_advance(self) -> bool:
        """A breach stops the rollout; missing data only holds a stage when required."""
        return self.status is GateStatus.BREACH or (
            self.required and self.status is GateStatus.INSUFFICIENT_DATA
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "status": str(self.status),
            "detail": self.detail,
            "figures": self.figures,
            "required": self.required,
        }


@dataclass(frozen=True)
class Outcomes:
    """Device counts of one arm by outcome; ``failed`` includes device-side roll-backs."""

    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    in_flight: int = 0
    pending: int = 0
    skipped: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.timed_out

    @property
    def failures(self) -> int:
        return self.failed + self.timed_out

    @property
    def failure_rate(self) -> float:
        return self.failures / self.finished if self.finished else 0.0


@dataclass(frozen=True)
class GateContext:
    """What a gate may look at; built by the engine under the rollout's row lock."""

    rollout_id: str
    model: str
    arms: tuple[Arm, ...]
    baseline: str
    outcomes: Mapping[str, Outcomes]
    since: datetime | None
    now: datetime
    # Every device of the current stage has finished: nothing more will come to judge it on.
    stage_settled: bool = False


class Gate(Protocol):
    """A check evaluated before each stage advances and continuously while running."""

    name: str

    def check(self, ctx: GateContext) -> GateResult: ...


# --- install health -------------------------------------------------------------------


class InstallFailureGate:
    """Breach when an arm's (failed + timed out) / finished exceeds ``max_failure_rate``,
    judged once at least ``min_finished`` devices of that arm have finished, or once the
    stage has settled (``GateContext.stage_settled``) on whatever finished: 3 of 3 failed
    is a breach even below the minimum."""

    name = "install_failure_rate"

    def __init__(self, *, max_failure_rate: float, min_finished: int) -> None:
        self.max_failure_rate = max_failure_rate
        self.min_finished = min_finished

    def check(self, ctx: GateContext) -> GateResult:
        figures: dict[str, Any] = {
            "max_failure_rate": self.max_failure_rate,
            "min_finished": self.min_finished,
            "arms": {},
        }
        breached, judged = [], 0
        for arm in ctx.arms:
            o = ctx.outcomes.get(arm.name, Outcomes())
            judge = o.finished >= self.min_finished or (ctx.stage_settled and o.finished > 0)
            figures["arms"][arm.name] = {
                "finished": o.finished,
                "succeeded": o.succeeded,
                "failed": o.failed,
                "timed_out": o.timed_out,
                "failure_rate": round(o.failure_rate, 4),
                "judged": judge,
            }
            if not judge:
                continue
            judged += 1
            if o.failure_rate > self.max_failure_rate:
                breached.append(
                    f"arm {arm.name}: {o.failures} of {o.finished} failed "
                    f"({o.failure_rate:.1%} > {self.max_failure_rate:.1%})"
                )
        if breached:
            return GateResult(self.name, GateStatus.BREACH, "; ".join(breached), figures)
        if not judged:
            return GateResult(
                self.name,
                GateStatus.INSUFFICIENT_DATA,
                f"fewer than {self.min_finished} devices finished in every arm, "
                "and the stage is not over",
                figures,
            )
        return GateResult(self.name, GateStatus.OK, "failure rate within bounds", figures)


# --- the statistics -------------------------------------------------------------------


def _ranks(values: Sequence[float]) -> tuple[list[float], float]:
    """Average ranks (1-based) of ``values`` and the tie term sum(t^3 - t)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        average = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = average
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    return ranks, ties


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Mann-Whitney U of ``x`` and the one-sided p-value of "x tends to be larger than y".

    Normal approximation with tie correction and continuity correction (fine from about
    ten values per group; gates require more). p is 1.0 when there is no variation.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("both groups need values")
    ranks, ties = _ranks([*x, *y])
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return u1, 1.0
    z = (u1 - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return u1, 1.0 - statistics.NormalDist().cdf(z)


def relative_change(arm: float, baseline: float) -> float:
    """(arm - baseline) / |baseline|; +-inf when the baseline is 0 and the arm is not."""
    if baseline == 0:
        return 0.0 if arm == 0 else math.copysign(math.inf, arm)
    return (arm - baseline) / abs(baseline)


@dataclass(frozen=True)
class Comparison:
    """An arm against the baseline on per-device values of one metric."""

    arm: str
    baseline: str
    n_arm: int
    n_baseline: int
    enough: bool
    arm_median: float | None = None
    baseline_median: float | None = None
    relative_change: float | None = None  # of the medians, signed: + means larger
    p_worse: float | None = None
    p_better: float | None = None
    worse: bool = False  # significantly worse by more than the tolerance
    better: bool = False  # significantly better by at least the required margin
    # Quartiles of the per-device values: the spread the dashboard draws around each median.
    arm_q1: float | None = None
    arm_q3: float | None = None
    baseline_q1: float | None = None
    baseline_q3: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def clean(value: object) -> object:
            if isinstance(value, float):
                return round(value, 6) if math.isfinite(value) else None  # JSON has no inf
            return value

        return {k: clean(v) for k, v in asdict(self).items()}


def compare(
    arm_values: Sequence[float],
    baseline_values: Sequence[float],
    *,
    better: Better,
    alpha: float,
    min_devices: int,
    max_worse: float = 0.0,
    min_better: float = 0.0,
    arm: str = "arm",
    baseline: str = "baseline",
) -> Comparison:
    """Compare per-device values of an arm with the baseline's (see the module docstring).

    ``better`` says which direction is good (``lower`` latency, ``higher`` confidence).
    ``worse`` is set when the arm is worse with one-sided p < alpha *and* its median is
    worse by more than ``max_worse`` (relative); ``better`` when it is better with p < alpha
    and by at least ``min_better``. Below ``min_devices`` per group nothing is concluded.
    """
    n_arm, n_base = len(arm_values), len(baseline_values)
    if n_arm < min_devices or n_base < min_devices:
        return Comparison(arm, baseline, n_arm, n_base, enough=False)
    arm_median = statistics.median(arm_values)
    base_median = statistics.median(baseline_values)
    arm_q1, _, arm_q3 = _quartiles(arm_values)
    base_q1, _, base_q3 = _quartiles(baseline_values)
    change = relative_change(arm_median, base_median)
    _, p_larger = mann_whitney_greater(arm_values, baseline_values)
    _, p_smaller = mann_whitney_greater(baseline_values, arm_values)
    p_worse, p_better = (p_larger, p_smaller) if better == "lower" else (p_smaller, p_larger)
    degradation = change if better == "lower" else -change
    return Comparison(
        arm,
        baseline,
        n_arm,
        n_base,
        enough=True,
        arm_median=arm_median,
        baseline_median=base_median,
        relative_change=change,
        p_worse=p_worse,
        p_better=p_better,
        worse=p_worse < alpha and degradation > max_worse,
        better=p_better < alpha and -degradation >= min_better and -degradation > 0,
        arm_q1=arm_q1,
        arm_q3=arm_q3,
        baseline_q1=base_q1,
        baseline_q3=base_q3,
    )


def _quartiles(values: Sequence[float]) -> list[float]:
    if len(values) < 2:
        return [values[0]] * 3
    return statistics.quantiles(values, n=4, method="inclusive")


# --- telemetry: THE HOOK ---------------------------------------------------------------


@dataclass(frozen=True)
class TelemetryQuery:
    """What a telemetry gate asks the telemetry store for.

    The answer maps arm name -> one value per device: the device's ``statistic`` (mean,
    p50, p95, p99) of ``metric`` over its samples of model ``model`` tagged with
    ``rollout_id`` and that arm, taken since ``since``. For a phased rollout ``arms`` is
    the single arm ``main`` (its desired entries carry no arm, so its samples have an
    empty arm) and ``baseline`` is ``PHASED_BASELINE``: devices of the same model running
    it outside this rollout over the same period.
    """

    rollout_id: str
    model: str
    metric: str
    statistic: Statistic
    since: datetime | None
    arms: tuple[Arm, ...]
    baseline: str


TelemetrySource = Callable[[TelemetryQuery], Mapping[str, Sequence[float]]]


def no_telemetry(query: TelemetryQuery) -> Mapping[str, Sequence[float]]:
    """The source until the telemetry store provides one: no data, so telemetry gates
    report ``insufficient_data`` (which holds a stage only for ``required`` gates)."""
    return {}


def telemetry_source() -> TelemetrySource:
    """THE HOOK where the telemetry selector plugs in.

    ``settings.FLEET_ROLLOUT_TELEMETRY_SOURCE`` is the dotted path of a ``TelemetrySource``
    (e.g. ``telemetry.selectors.rollout_arm_device_values``); unset, ``no_telemetry``.
    """
    path = getattr(settings, "FLEET_ROLLOUT_TELEMETRY_SOURCE", "")
    source: TelemetrySource = import_string(path) if path else no_telemetry
    return source


def _query(ctx: GateContext, metric: str, statistic: Statistic) -> TelemetryQuery:
    return TelemetryQuery(
        rollout_id=ctx.rollout_id,
        model=ctx.model,
        metric=metric,
        statistic=statistic,
        since=ctx.since,
        arms=ctx.arms,
        baseline=ctx.baseline,
    )


def _challengers(ctx: GateContext) -> list[Arm]:
    return [a for a in ctx.arms if a.name != ctx.baseline]


class TelemetryGate:
    """Breach when a challenger arm is significantly and materially worse than the
    baseline on one metric (``compare``); alpha is split over the challengers."""

    def __init__(self, config: TelemetryGateConfig, source: TelemetrySource) -> None:
        self.config = config
        self.source = source
        self.name = f"telemetry:{config.metric}:{config.statistic}"

    def check(self, ctx: GateContext) -> GateResult:
        c = self.config
        values = self.source(_query(ctx, c.metric, c.statistic))
        challengers = _challengers(ctx)
        alpha = c.alpha / max(1, len(challengers))
        comparisons = [
            compare(
                values.get(arm.name, ()),
                values.get(ctx.baseline, ()),
                better=c.better,
                alpha=alpha,
                min_devices=c.min_devices,
                max_worse=c.max_relative_change,
                arm=arm.name,
                baseline=ctx.baseline,
            )
            for arm in challengers
        ]
        figures = {
            "metric": c.metric,
            "statistic": c.statistic,
            "better": c.better,
            "alpha_per_arm": alpha,
            "max_relative_change": c.max_relative_change,
            "comparisons": [cmp.to_dict() for cmp in comparisons],
        }
        worse = [cmp for cmp in comparisons if cmp.worse]
        if worse:
            detail = "; ".join(
                f"arm {cmp.arm}: median {c.statistic} {c.metric} {cmp.arm_median:.4g} vs "
                f"{cmp.baseline_median:.4g} ({(cmp.relative_change or 0):+.1%}, "
                f"p={cmp.p_worse:.2g}, {cmp.n_arm} vs {cmp.n_baseline} devices)"
                for cmp in worse
            )
            return GateResult(self.name, GateStatus.BREACH, detail, figures, c.required)
        if not comparisons or not all(cmp.enough for cmp in comparisons):
            return GateResult(
                self.name,
                GateStatus.INSUFFICIENT_DATA,
                f"fewer than {c.min_devices} devices with {c.metric} in an arm",
                figures,
                c.required,
            )
        return GateResult(
            self.name, GateStatus.OK, "no arm worse than baseline", figures, c.required
        )


class Verdict(StrEnum):
    """What automatic promotion concluded from the comparisons (``pick_winner``)."""

    CHALLENGER = "challenger"  # a challenger beats the baseline: promote it
    BASELINE = "baseline"  # the baseline beats every challenger: promote the baseline
    INCONCLUSIVE = "inconclusive"  # enough devices, no arm better: the policy decides
    INSUFFICIENT_DATA = "insufficient_data"  # an arm lacks min_devices: keep collecting


@dataclass(frozen=True)
class Promotion:
    """The arm to promote (None: none yet), why, and the comparisons behind it."""

    winner: str | None
    verdict: Verdict
    comparisons: list[Comparison]

    @property
    def reason(self) -> str:
        if self.verdict is Verdict.CHALLENGER:
            return f"arm {self.winner} beats the baseline"
        if self.verdict is Verdict.BASELINE:
            return f"the baseline {self.winner} beats every other arm"
        if self.verdict is Verdict.INCONCLUSIVE:
            return "no arm differs from the baseline with the minimum of devices"
        return "too few devices in an arm"


def pick_winner(config: PromotionConfig, ctx: GateContext, source: TelemetrySource) -> Promotion:
    """Automatic promotion (one-sided tests at alpha split over the challengers):

    - a challenger significantly better than the baseline (by ``min_relative_change``):
      the best such one wins;
    - else, once every arm has ``min_devices``, every challenger significantly worse:
      the baseline wins (the experiment lost);
    - else, once every arm has ``min_devices``: inconclusive, and ``on_inconclusive``
      says what happens (``baseline``: promote it; ``wait``: an operator decides);
    - before that: insufficient data, keep collecting.
    """
    values = source(_query(ctx, config.metric, config.statistic))
    challengers = _challengers(ctx)
    alpha = config.alpha / max(1, len(challengers))
    comparisons = [
        compare(
            values.get(arm.name, ()),
            values.get(ctx.baseline, ()),
            better=config.better,
            alpha=alpha,
            min_devices=config.min_devices,
            min_better=config.min_relative_change,
            arm=arm.name,
            baseline=ctx.baseline,
        )
        for arm in challengers
    ]
    sign = -1.0 if config.better == "lower" else 1.0
    winners = [c for c in comparisons if c.better]
    if winners:
        best = max(winners, key=lambda c: sign * (c.relative_change or 0.0))
        return Promotion(best.arm, Verdict.CHALLENGER, comparisons)
    if not comparisons or not all(c.enough for c in comparisons):
        return Promotion(None, Verdict.INSUFFICIENT_DATA, comparisons)
    if all(c.worse for c in comparisons):
        return Promotion(ctx.baseline, Verdict.BASELINE, comparisons)
    winner = ctx.baseline if config.on_inconclusive == "baseline" else None
    return Promotion(winner, Verdict.INCONCLUSIVE, comparisons)
