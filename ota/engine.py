"""The rollout engine: one evaluation of one rollout (docs/rollouts.md).

``rollout_evaluate`` is what the Celery task runs, after device events, on the beat, and
when the pace asks for it (``Evaluation.wake_in``).
It holds the rollout's row lock for the whole evaluation, in one transaction with the
desired states it issues, so evaluations of one rollout run one after another: running
one twice, or two at once, notifies nobody twice, and a crash leaves either both the
device rows and their envelopes or neither. In order:

1. start a scheduled rollout whose time has come;
2. track outcomes of devices in flight: their update events for this rollout (and a
   whole-envelope rejection) since the envelope we issued, falling back on the reported
   state (a device already running the version reports no events, only its state); only
   devices with news of an event or a report since the last evaluation are read
   (``ota.tracking``), and every device in flight every ``TRACK_FULL_EVERY``, when
   devices without progress for ``device_timeout_minutes`` time out, and a timed-out
   device that comes back and finishes replaces its timeout (a rollout the engine paused
   for an install-gate breach runs again once that clears);
3. running: retry failed devices, check the gates (on a breach pause or abort as the
   policy says), advance the stage once every device of it finished and it baked,
   complete, or (A/B) promote; then notify pending devices of the stage, in bucket
   order, at the policy's pace and inside its maintenance window, and when the pace holds
   some back, say when the next one falls due;
4. aborted: re-issue every touched device's previous version through the director, in
   batches; ``rolled_back`` once none is still rolling back.
"""

import logging
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import (
    BooleanField,
    Case,
    Count,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Value,
    When,
)
from django.utils import timezone

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase, stored_models
from fleet.bulk import columns_update, filter_in, rows_update
from fleet.director import ModelAssignment, devices_desired_set
from fleet.errors import ServiceError
from fleet.models import DesiredState, Device, DeviceEvent
from ota import rollouts
from ota.gates import (
    PHASED_BASELINE,
    Gate,
    GateContext,
    GateResult,
    GateStatus,
    InstallFailureGate,
    Outcomes,
    TelemetryGate,
    Verdict,
    pick_winner,
    telemetry_source,
)
from ota.models import (
    IN_FLIGHT,
    TRACKED,
    Artifact,
    Model,
    Rollout,
    RolloutDevice,
    RolloutDeviceState,
    RolloutStatus,
    RolloutStrategy,
)
from ota.pacing import (
    RATE_WINDOW,
    PaceCounts,
    current_rate,
    next_due_in,
    pace,
    pacing_since,
    window_leaving,
    window_open,
)
from ota.rollout_config import baseline_arm
from ota.rollout_selectors import rollout_pk
from ota.rollouts import RolloutConfig
from ota.tracking import EVALUATED, tracking_news_take

log = logging.getLogger(__name__)

D = RolloutDeviceState
# Bounds on one evaluation's work (and so on how long it holds its locks); what is left
# over is picked up by the next evaluation, which the task schedules at once.
NOTIFY_MAX_PER_EVALUATION = 1000
# The first evaluation of a stage notifies at most this many: their envelopes go out when
# it commits, and the devices start on them while the next evaluation signs the rest. A
# full batch first kept the devices idle for its whole signing, at every stage hand-over.
NOTIFY_FIRST_OF_STAGE = 100
ROLLBACK_BATCH = 1000
TRACK_CHUNK = 1000
# Tracking reads only the devices with news (ota.tracking), and every device in flight
# this often: for timeouts, which no message announces, and for events stored by anything
# that bypasses fleet.reports.
TRACK_FULL_EVERY = timedelta(seconds=10)
# A wake-up is asked for only when none is pending (``Rollout.wake_at``) or this much
# sooner than the pending one; and one due within this much counts as due, so a Celery
# countdown firing a hair early still asks for the next.
WAKE_EPSILON = timedelta(milliseconds=10)


# Telemetry gates and automatic promotion query the telemetry store at most this often
# (settings.FLEET_ROLLOUT_TELEMETRY_INTERVAL_SECONDS); evaluations come with every event.
def _telemetry_interval() -> timedelta:
    return timedelta(seconds=settings.FLEET_ROLLOUT_TELEMETRY_INTERVAL_SECONDS)


# Device columns that issuing envelopes never reads (devices_desired_set reads the
# device's facts again under its lock): not fetched with the rows being notified.
_DEVICE_UNUSED = ("device__reported", "device__agent_version", "device__last_seen_at")
ACTIVE = (D.PENDING, D.NOTIFIED, D.IN_PROGRESS)
# States of a device that was notified and not yet rolled back (with attempts > 0).
TOUCHED = (D.PENDING, D.NOTIFIED, D.IN_PROGRESS, D.SUCCEEDED, D.FAILED, D.TIMED_OUT)
TERMINAL_PHASES = frozenset({Phase.COMMITTED, Phase.FAILED, Phase.REJECTED, Phase.ROLLED_BACK})
DEVICE_FIELDS = [
    "state",
    "attempts",
    "rollback_attempts",
    "desired_seq",
    "notified_at",
    "phase_at",
    "last_phase",
    "last_code",
    "previous_artifact",
    "updated_at",
]


@dataclass
class Evaluation:
    """What one evaluation did (the task's return value; also handy in tests)."""

    rollout_id: str
    status: str = ""
    tracked: int = 0
    notified: int = 0
    rollback_issued: int = 0
    more: bool = False
    # Seconds until the pace lets the next pending device go: the task schedules an
    # evaluation then (``more`` wins). None when nothing waits for the pace alone, when the
    # beat comes first, or when a wake-up is already pending.
    wake_in: float | None = None
    note: str = ""
    gates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chunks[T](items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def rollout_evaluate(
    *, rollout_id: str, now: datetime | None = None, rng: random.Random | None = None
) -> Evaluation:
    """Evaluate the rollout ``r-<n>`` once (see the module docstring); idempotent.

    Ids that are not ours (events from other systems) and missing rollouts do nothing.
    """
    result = Evaluation(rollout_id)
    pk = rollout_pk(rollout_id)
    if pk is None:
        return result
    with transaction.atomic():
        rollout = Rollout.objects.select_for_update().select_related("model").filter(pk=pk).first()
        if rollout is None:
            return result
        # Read once the lock is held: an evaluation that waited for it (say, behind the
        # start that makes a large rollout's device rows) must not date its work earlier.
        now = now or timezone.now()
        wake_at = rollout.wake_at
        if (
            rollout.status == RolloutStatus.SCHEDULED
            and rollout.starts_at is not None
            and rollout.starts_at <= now
        ):
            try:
                rollout = rollouts.rollout_start_due(rollout=rollout, now=now)
            except ServiceError as exc:
                # E.g. a device joined a group another rollout of the model holds: it stays
                # scheduled (and says why) until an operator narrows or unschedules it.
                log.warning("%s cannot start: %s", rollout.public_id, exc)
                result.note = f"cannot start: {exc.detail}"
        if rollout.status in EVALUATED:
            config = RolloutConfig.of(rollout)
            result.tracked = _track(rollout, config, now)
            tracked_at = rollout.tracked_at  # rollouts.* may hand back another instance
            if rollout.status == RolloutStatus.PAUSED and result.tracked:
                rollout = _resume_if_cleared(rollout, config, now, result)
            if rollout.status == RolloutStatus.RUNNING:
                rollout = _run(rollout, config, now, rng or random.Random(), result)  # noqa: S311
            if rollout.status == RolloutStatus.ABORTED:
                rollout = _roll_back(rollout, config, now, result)
            changes: dict[str, Any] = {"evaluated_at": now, "tracked_at": tracked_at}
            issued = result.notified + result.rollback_issued
            if issued:
                # What the bridge compares with the decisive events it stored, to queue the
                # evaluation that may open the next stage at once (ota.tasks).
                changes["issued_count"] = F("issued_count") + issued
            if result.wake_in is not None:
                at = now + timedelta(seconds=result.wake_in)
                if _wake_wanted(pending=wake_at, at=at, now=now):
                    changes["wake_at"] = at
                else:
                    result.wake_in = None
            Rollout.objects.filter(pk=pk).update(**changes)
        result.status = rollout.status
    return result


def _wake_wanted(*, pending: datetime | None, at: datetime, now: datetime) -> bool:
    """Whether to ask for a wake-up at ``at`` when ``pending`` (``wake_at``) was asked for.

    Evaluations after device events come many a second: each asking for its own wake-up
    would start another chain of them every time. One pending is enough unless it is due
    (or was consumed), or the new one is sooner (the rate grew).
    """
    return pending is None or pending <= now + WAKE_EPSILON or at < pending - WAKE_EPSILON


# --- 2. outcomes -------------------------------------------------------------------------------


def _runs(reported: object, model: str, target: tuple[str, int] | None) -> bool:
    """Whether a reported state shows ``model`` at exactly (version, release counter)."""
    if target is None:
        return False
    for entry in stored_models(reported):
        if entry.name == model:
            return (entry.version, entry.release_counter) == target
    return False


@dataclass
class _Tracked:
    """What tracking reads of a device in flight and may change (``_TRACK_FIELDS``)."""

    pk: int
    device_id: int
    state: str
    desired_seq: int
    artifact_id: int | None
    previous_artifact_id: int | None
    last_phase: str
    last_code: str
    phase_at: datetime | None
    reported_seq: int

    def key(self) -> tuple[str, str, str, datetime | None]:
        return (self.state, self.last_phase, self.last_code, self.phase_at)


_TRACK_FIELDS = ("state", "last_phase", "last_code", "phase_at")


def _full_pass_due(rollout: Rollout, now: datetime) -> bool:
    """Whether tracking reads every device in flight now (``TRACK_FULL_EVERY``; also when
    the clock went back, as tests that evaluate at given times do)."""
    at = rollout.tracked_at
    return at is None or not at <= now < at + TRACK_FULL_EVERY


def _track(rollout: Rollout, config: RolloutConfig, now: datetime) -> int:
    """Update devices in flight from their events and reports; returns how many changed.

    Only devices that can change are read. Usually those with news (``ota.tracking``):
    stored an event or a report since the last evaluation. Every ``TRACK_FULL_EVERY``
    (``Rollout.tracked_at``), a full pass instead, of those with an event of their current
    attempt, a report at or past the seq we sent them, or no progress for the timeout.
    The others (most of a large stage, waiting for their turn on the broker or still
    downloading) are left in the database: reading every device in flight each time made
    an evaluation cost O(devices in flight), and with one evaluation per batch of events a
    stage cost O(n^2); finding the few that moved among them by a query at every
    evaluation was still one of the costliest statements of a rollout.
    """
    public_id, name = rollout.public_id, rollout.model.name
    # A whole desired state refused (bad signature, expired) names no model or rollout.
    mine = Q(rollout_id=public_id, model=name) | Q(model="", phase=Phase.REJECTED)
    timeout = timedelta(minutes=config.policy.device_timeout_minutes)
    news = sorted(tracking_news_take(rollout_pk=rollout.pk))  # taken by a full pass too
    mine_rows = RolloutDevice.objects.filter(rollout=rollout)
    if _full_pass_due(rollout, now):
        rollout.tracked_at = now
        attempt_events = DeviceEvent.objects.filter(
            mine, device_id=OuterRef("device_id"), seq__gte=OuterRef("desired_seq")
        )
        # Timed-out devices only by their news: the full pass would read every one of them
        # each time (their last phase is always older than the timeout).
        queries = [
            mine_rows.filter(state__in=IN_FLIGHT).filter(
                Exists(attempt_events)
                | Q(device__reported_seq__gte=F("desired_seq"))
                | Q(phase_at__lt=now - timeout)
            ),
            filter_in(mine_rows.filter(state=D.TIMED_OUT), "device_id", news),
        ]
    else:
        queries = [filter_in(mine_rows.filter(state__in=TRACKED), "device_id", news)]
    found = {
        values[0]: _Tracked(*values)
        for query in queries
        for values in query.values_list(
            "pk",
            "device_id",
            "state",
            "desired_seq",
            "artifact_id",
            "previous_artifact_id",
            "last_phase",
            "last_code",
            "phase_at",
            "device__reported_seq",
        )
    }
    rows = [found[pk] for pk in sorted(found)]
    if not rows:
        return 0
    events: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for chunk in _chunks(rows, TRACK_CHUNK):
        for event in filter_in(
            DeviceEvent.objects.filter(mine), "device_id", [r.device_id for r in chunk]
        ).values("pk", "device_id", "seq", "phase", "code", "ts", "received_at"):
            events[event["device_id"]].append(dict(event))
    # Each row's events of its current attempt, in the device's order.
    attempts = {
        row.pk: sorted(
            (e for e in events[row.device_id] if e["seq"] >= row.desired_seq),
            key=lambda e: (e["ts"], e["pk"]),
        )
        for row in rows
    }
    # A report is read only where no terminal event of the attempt decides: most devices
    # that finish send both, and decoding every finished device's state takes a share of the
    # worker's samples in the rollout benchmark.
    undecided = [
        r.device_id
        for r in rows
        if r.reported_seq >= r.desired_seq
        and not any(e["phase"] in TERMINAL_PHASES for e in attempts[r.pk])
    ]
    reported: dict[int, object] = {}
    for pks in _chunks(undecided, TRACK_CHUNK):
        reported.update(filter_in(Device.objects.all(), "pk", pks).values_list("pk", "reported"))
    wanted = {r.artifact_id for r in rows} | {r.previous_artifact_id for r in rows}
    targets = {
        pk: (version, counter)
        for pk, version, counter in Artifact.objects.filter(
            pk__in=[pk for pk in wanted if pk is not None]
        ).values_list("pk", "version", "release_counter")
    }
    changed = []
    for row in rows:
        before = row.key()
        rolling_back = row.state == D.ROLLING_BACK
        timed_out = row.state == D.TIMED_OUT
        target = targets.get((row.previous_artifact_id if rolling_back else row.artifact_id) or 0)
        attempt = attempts[row.pk]
        terminal = [e for e in attempt if e["phase"] in TERMINAL_PHASES]
        if attempt:
            row.last_phase = attempt[-1]["phase"]
            row.phase_at = max(e["received_at"] for e in attempt)
        if terminal:
            row.last_phase, row.last_code = terminal[-1]["phase"], terminal[-1]["code"]
            ok: bool | None = terminal[-1]["phase"] == Phase.COMMITTED
        elif row.reported_seq >= row.desired_seq and _runs(
            reported.get(row.device_id), name, target
        ):
            ok = True  # no event (it already ran that version), but its report says so
            row.phase_at = now if row.last_phase != Phase.COMMITTED else row.phase_at
            row.last_phase = Phase.COMMITTED
        else:
            ok = None
        if ok is True:
            # A device that timed out and came back and committed succeeded after all.
            row.state = D.ROLLED_BACK if rolling_back else D.SUCCEEDED
            if timed_out and row.last_code == "timeout":
                row.last_code = ""
        elif ok is False:
            # A failed roll-back goes back to "failed": the roll-back step retries or gives up.
            row.state = D.FAILED
        elif timed_out:
            pass  # still no outcome: it stays timed out (progress does not reopen its stage)
        elif row.phase_at is not None and now - row.phase_at > timeout:
            row.state = D.FAILED if rolling_back else D.TIMED_OUT
            row.last_code = row.last_code or "timeout"
        elif attempt and not rolling_back:
            row.state = D.IN_PROGRESS
        if row.key() != before:
            changed.append(row)
    columns_update(
        RolloutDevice,
        [r.pk for r in changed],
        {name: [getattr(r, name) for r in changed] for name in _TRACK_FIELDS},
    )
    return len(changed)


# The Outcomes field each state counts in; finished states only from ``gates_since``.
_FINISHED_FIELDS = {D.SUCCEEDED: "succeeded", D.FAILED: "failed", D.TIMED_OUT: "timed_out"}
_OPEN_FIELDS = {
    D.NOTIFIED: "in_flight",
    D.IN_PROGRESS: "in_flight",
    D.PENDING: "pending",
    D.SKIPPED: "skipped",
}


def _outcomes(rollout: Rollout, *, whole: bool = False) -> dict[str, Outcomes]:
    """Per-arm outcome counts; finished devices count from ``gates_since`` (a resume), or
    over the ``whole`` rollout.

    One count per (arm, state), summed here: cheaper for the database than a
    FILTER clause per outcome over every row, at every evaluation.
    """
    rows = RolloutDevice.objects.filter(rollout=rollout).order_by()
    since = None if whole else rollout.gates_since
    recent = (
        Case(When(phase_at__gte=since, then=Value(True)), default=Value(False))
        if since is not None
        else Value(True)
    )
    counts = rows.annotate(recent=ExpressionWrapper(recent, output_field=BooleanField()))
    outcomes: dict[str, dict[str, int]] = {}
    for arm, state, is_recent, n in counts.values_list("arm", "state", "recent").annotate(
        n=Count("pk")
    ):
        arm_counts = outcomes.setdefault(arm, {})
        name = _OPEN_FIELDS.get(state) or (_FINISHED_FIELDS.get(state) if is_recent else None)
        if name is not None:
            arm_counts[name] = arm_counts.get(name, 0) + n
    return {arm: Outcomes(**arm_counts) for arm, arm_counts in outcomes.items()}


# --- 3. running ----------------------------------------------------------------------------------


def _context(
    rollout: Rollout, config: RolloutConfig, now: datetime, *, stage_settled: bool
) -> GateContext:
    baseline = baseline_arm(config.arms)
    return GateContext(
        rollout_id=rollout.public_id,
        model=rollout.model.name,
        arms=config.arms,
        baseline=baseline.name if baseline else PHASED_BASELINE,
        outcomes=_outcomes(rollout),
        since=rollout.started_at,
        now=now,
        stage_settled=stage_settled,
    )


def _stage_active(rollout: Rollout, config: RolloutConfig) -> bool:
    """Whether a device of the current stage has not finished yet (an index probe)."""
    return RolloutDevice.objects.filter(
        rollout=rollout, state__in=ACTIVE, bucket__lte=_bound(rollout, config)
    ).exists()


def _stored(result: dict[str, Any]) -> GateResult:
    return GateResult(
        gate=result["gate"],
        status=GateStatus(result["status"]),
        detail=result["detail"],
        figures=result["figures"],
        required=result["required"],
    )


def _gates(rollout: Rollout, config: RolloutConfig, ctx: GateContext) -> list[GateResult]:
    policy = config.policy
    install: Gate = InstallFailureGate(
        max_failure_rate=policy.max_failure_rate, min_finished=policy.min_finished
    )
    results = [install.check(ctx)]
    if policy.telemetry_gates:
        stored = rollout.gate_figures.get("telemetry") or {}
        at = stored.get("at")
        fresh = at and ctx.now - datetime.fromisoformat(at) < _telemetry_interval()
        if fresh and len(stored.get("results", [])) == len(policy.telemetry_gates):
            results += [_stored(r) for r in stored["results"]]
        else:
            source = telemetry_source()
            telemetry = [TelemetryGate(g, source).check(ctx) for g in policy.telemetry_gates]
            rollout.gate_figures["telemetry"] = {
                "at": ctx.now.isoformat(),
                "results": [r.to_dict() for r in telemetry],
            }
            results += telemetry
    return results


def _retry(rollout: Rollout, config: RolloutConfig) -> None:
    """Failed and timed-out devices with attempts left go back to pending."""
    RolloutDevice.objects.filter(
        rollout=rollout,
        state__in=[D.FAILED, D.TIMED_OUT],
        attempts__lt=config.policy.max_attempts,
    ).update(state=D.PENDING, updated_at=timezone.now())


def _resume_if_cleared(
    rollout: Rollout, config: RolloutConfig, now: datetime, result: Evaluation
) -> Rollout:
    """A rollout the engine paused for an install-gate breach runs again once the breach
    has cleared: a device that timed out came back and succeeded. Looked at only when
    tracking changed a device. A pause by an operator, or for a telemetry gate (whose
    figures can drift back without anything having been fixed), stays until an operator
    resumes."""
    breaches = rollouts.rollout_pause_breaches(rollout)
    if not breaches or set(breaches) != {InstallFailureGate.name}:
        return rollout
    active = _stage_active(rollout, config)
    ctx = _context(rollout, config, now, stage_settled=not active)
    gates = _gates(rollout, config, ctx)
    result.gates = [g.to_dict() for g in gates]
    rollout.gate_figures = {**rollout.gate_figures, "at": now.isoformat(), "gates": result.gates}
    rollout.save(update_fields=["gate_figures"])
    if any(g.status is GateStatus.BREACH for g in gates):
        return rollout
    return rollouts.rollout_resume_cleared(
        rollout=rollout,
        reason="gate breach cleared: " + "; ".join(f"{g.gate}: {g.detail}" for g in gates),
        figures={"gates": result.gates},
    )


def _run(
    rollout: Rollout,
    config: RolloutConfig,
    now: datetime,
    rng: random.Random,
    result: Evaluation,
) -> Rollout:
    _retry(rollout, config)
    active = _stage_active(rollout, config)
    ctx = _context(rollout, config, now, stage_settled=not active)
    gates = _gates(rollout, config, ctx)
    result.gates = [g.to_dict() for g in gates]
    rollout.gate_figures = {
        **rollout.gate_figures,
        "at": now.isoformat(),
        "gates": result.gates,
    }
    rollout.save(update_fields=["gate_figures"])
    breaches = [g for g in gates if g.status is GateStatus.BREACH]
    if breaches:
        reason = rollouts.GATE_BREACH + "; ".join(f"{g.gate}: {g.detail}" for g in breaches)
        figures = {"gates": [g.to_dict() for g in breaches]}
        result.note = reason
        if config.policy.on_breach == "abort":
            return rollouts.rollout_abort(rollout=rollout, by=None, reason=reason, figures=figures)
        return rollouts.rollout_pause(rollout=rollout, by=None, reason=reason, figures=figures)
    rollout = _advance(rollout, config, ctx, gates, now, result, active=active)
    if rollout.status == RolloutStatus.RUNNING:
        result.notified = _notify(rollout, config, now, rng, result)
    return rollout


def _bound(rollout: Rollout, config: RolloutConfig) -> float:
    """The highest bucket the current stage takes (``bucket <= bound``, ota.cohorts)."""
    if rollout.promoted_arm:
        return 1.0
    bounds = rollout.stage_bounds
    if isinstance(bounds, list) and len(bounds) == len(config.stages):
        return float(bounds[rollout.current_stage])
    return config.stages[rollout.current_stage].percent / 100  # started before stage_bounds


def _advance(
    rollout: Rollout,
    config: RolloutConfig,
    ctx: GateContext,
    gates: list[GateResult],
    now: datetime,
    result: Evaluation,
    *,
    active: bool,
) -> Rollout:
    """Open the next stage, complete, or promote, when the current stage allows it
    (``active``: a device of the stage has not finished)."""
    if active:
        if rollout.stage_settled_at is not None:  # a retry brought a device back
            rollout.stage_settled_at = None
            rollout.save(update_fields=["stage_settled_at"])
        return rollout
    if rollout.stage_settled_at is None:
        rollout.stage_settled_at = now
        rollout.save(update_fields=["stage_settled_at"])
    stage = rollout.current_stage
    bake = 0.0 if rollout.promoted_arm else config.stages[stage].bake_minutes
    baked_at = rollout.stage_settled_at + timedelta(minutes=bake)
    if now < baked_at:
        result.note = f"stage {stage + 1} baking until {baked_at.isoformat()}"
        return rollout
    holding = [g for g in gates if g.blocks_advance]
    if holding:
        result.note = "waiting for gate data: " + ", ".join(g.gate for g in holding)
        return rollout
    figures = {
        "outcomes": {arm: asdict(o) for arm, o in ctx.outcomes.items()},
        "gates": [g.to_dict() for g in gates],
    }
    last = stage == len(config.stages) - 1
    if rollout.promoted_arm or (last and rollout.strategy == RolloutStrategy.PHASED):
        return rollouts.rollout_complete(
            rollout=rollout, figures=figures, failures=_failures_over(rollout, config, ctx)
        )
    if not last:
        return rollouts.rollout_stage_advance(rollout=rollout, stage=stage + 1, figures=figures)
    promotion = config.policy.promotion
    result.note = "awaiting promotion of an arm"
    asked = rollout.gate_figures.get("promotion_at")
    if promotion.mode == "auto" and (
        not asked or now - datetime.fromisoformat(asked) >= _telemetry_interval()
    ):
        decision = pick_winner(promotion, ctx, telemetry_source())
        rollout.gate_figures["promotion"] = [c.to_dict() for c in decision.comparisons]
        rollout.gate_figures["promotion_verdict"] = str(decision.verdict)
        rollout.gate_figures["promotion_at"] = now.isoformat()
        rollout.save(update_fields=["gate_figures"])
        result.note = f"awaiting promotion of an arm: {decision.reason}"
        if decision.winner is not None:
            return rollouts.rollout_promote(
                rollout=rollout,
                arm=decision.winner,
                by=None,
                reason=f"automatic promotion: {decision.reason} on "
                f"{promotion.statistic} {promotion.metric}"
                + (
                    "; the policy keeps the baseline"
                    if decision.verdict is Verdict.INCONCLUSIVE
                    else ""
                ),
            )
    return rollout


def _failures_over(rollout: Rollout, config: RolloutConfig, ctx: GateContext) -> str:
    """The arms whose failures over the whole rollout exceed ``max_failure_rate``, said
    for the audit ("" for none). The gates count from the last resume, which acknowledged
    the failures before it; the rollout's outcome does not forget them."""
    # Counted again only when a resume made the gates forget some (once, at the end).
    outcomes = ctx.outcomes if rollout.gates_since is None else _outcomes(rollout, whole=True)
    limit = config.policy.max_failure_rate
    over = [
        f"arm {arm}: {o.failures} of {o.finished} failed ({o.failure_rate:.1%} > {limit:.1%})"
        for arm, o in sorted(outcomes.items())
        if o.finished and o.failure_rate > limit
    ]
    return "; ".join(over)


def _previous_artifacts(model: Model, device_pks: Sequence[int]) -> dict[int, int | None]:
    """Each device's current desired entry for ``model``, as an artifact id."""
    paths: dict[int, str] = {}
    for pk, payload in DesiredState.objects.filter(device_id__in=device_pks).values_list(
        "device_id", "payload"
    ):
        for entry in stored_models(payload):
            if entry.name == model.name and entry.path is not None:
                paths[pk] = entry.path
    ids = dict(
        Artifact.objects.filter(model=model, target_path__in=set(paths.values())).values_list(
            "target_path", "pk"
        )
    )
    return {pk: ids.get(path) for pk, path in paths.items()}


def _issue(
    rollout: Rollout,
    rows: Sequence[RolloutDevice],
    artifact_of: dict[int, Artifact],
    arm_of: dict[int, str | None],
) -> tuple[dict[int, int], dict[int, ServiceError]]:
    """Issue each row's artifact through the director: (seq by device pk, refusals)."""
    by_pk = {row.device_id: row for row in rows}
    public_id = rollout.public_id
    outcome = devices_desired_set(
        devices=[row.device for row in rows],
        assignments_for=lambda device: [
            ModelAssignment(
                artifact=artifact_of[device.pk], rollout_id=public_id, arm=arm_of[device.pk]
            )
        ],
    )
    refused = {
        row.device_id: outcome.refused[row.device.device_id]
        for row in rows
        if row.device.device_id in outcome.refused
    }
    seqs = dict(
        DesiredState.objects.filter(device_id__in=list(by_pk)).values_list("device_id", "seq")
    )
    return seqs, refused


def _notify(
    rollout: Rollout,
    config: RolloutConfig,
    now: datetime,
    rng: random.Random,
    result: Evaluation,
) -> int:
    """Notify pending devices of the stage, in bucket order, within the pace and window."""
    policy = config.policy
    if not window_open(policy.window, now):
        result.note = result.note or "outside the maintenance window"
        return 0
    pending = RolloutDevice.objects.filter(
        rollout=rollout, state=D.PENDING, bucket__lte=_bound(rollout, config)
    )
    # Most evaluations come while a stage's devices are all in flight: nobody to notify,
    # and no reason to count over every device of the rollout (an index probe instead).
    if not pending.exists():
        return 0
    since = pacing_since(now=now, started=[rollout.stage_started_at, rollout.gates_since])
    counts = PaceCounts(
        **RolloutDevice.objects.filter(rollout=rollout).aggregate(
            succeeded=Count("pk", filter=Q(state=D.SUCCEEDED)),
            notified=Count("pk", filter=Q(attempts__gt=0)),
            last_minute=Count("pk", filter=Q(notified_at__gt=now - RATE_WINDOW)),
            since=Count("pk", filter=Q(notified_at__gte=since)),
        )
    )
    paced = pace(
        policy,
        counts,
        seconds_since=(now - since).total_seconds(),
        cap_first=NOTIFY_FIRST_OF_STAGE,
        cap_more=NOTIFY_MAX_PER_EVALUATION,
        rng=rng,
    )
    budget = paced.budget
    if budget <= 0:
        result.wake_in = _next_due(rollout, config, now, since, paced.rate, counts)
        return 0
    # The batch's keys first, then its rows: joined to the devices before the sort, the
    # query read the device of every pending row of the stage (thousands) for a batch of
    # a hundred. The director needs the device's id only: decoding every device's
    # reported state (JSON) would be wasted work for the worker.
    batch = list(pending.order_by("bucket", "pk").values_list("pk", flat=True)[:budget])
    rows = list(
        filter_in(RolloutDevice.objects.all(), "pk", batch)
        .select_related("device")
        .defer(*_DEVICE_UNUSED)
        .order_by("bucket", "pk")
    )
    if not rows:
        return 0
    # One or two artifacts (an arm each) for the whole batch: read once, not once a row.
    artifacts = Artifact.objects.select_related("model").in_bulk(
        {r.artifact_id for r in rows if r.artifact_id is not None}
    )
    # A high rate and devices left over: the task queues the next evaluation at once. Only
    # then: were it set whenever the rate allows more than a batch, every evaluation of an
    # unpaced rollout would queue another, forever, each event batch starting a new chain.
    result.more = paced.capped and len(rows) == budget
    previous = _previous_artifacts(rollout.model, [r.device_id for r in rows if r.attempts == 0])
    phased = rollout.strategy == RolloutStrategy.PHASED
    seqs, refused = _issue(
        rollout,
        rows,
        {r.device_id: artifacts[r.artifact_id] for r in rows if r.artifact_id in artifacts},
        {r.device_id: None if phased else (rollout.promoted_arm or r.arm) for r in rows},
    )
    issued = 0
    for row in rows:
        refusal = refused.get(row.device_id)
        if refusal is not None:
            log.warning("%s: %s refused: %s", rollout.public_id, row.device.device_id, refusal)
            row.last_code = str(refusal.code)
            if row.attempts == 0:
                row.state = D.SKIPPED  # never touched: nothing to roll back
            else:
                row.state, row.attempts = D.FAILED, max(row.attempts, policy.max_attempts)
            continue
        if row.attempts == 0:
            row.previous_artifact_id = previous.get(row.device_id)
        row.state = D.NOTIFIED
        row.attempts += 1
        row.desired_seq = seqs[row.device_id]
        row.notified_at = row.phase_at = now
        row.last_phase = row.last_code = ""
        issued += 1
    rows_update(rows, DEVICE_FIELDS)
    if not result.more and len(rows) == budget and pending.exists():
        first = sum(1 for r in rows if r.state == D.NOTIFIED and r.attempts == 1)
        after = counts.after(issued=issued, first=first)
        rate = current_rate(policy, succeeded=after.succeeded, notified=after.notified)
        result.wake_in = _next_due(rollout, config, now, since, rate, after)
    return issued


def _next_due(
    rollout: Rollout,
    config: RolloutConfig,
    now: datetime,
    since: datetime,
    rate: float,
    counts: PaceCounts,
) -> float | None:
    """Seconds until the pace lets the next pending device go (``next_due_in``).

    ``counts`` are those after this evaluation's notifications; a retried device notified
    twice within the minute counts twice there, which can only make the wake-up later.
    """
    frees_in = None
    full = window_leaving(rate_per_minute=rate, notified_last_minute=counts.last_minute)
    if full > 0:
        # The hard limit: the ``full``-th oldest notification of the last 60 s has to leave.
        leaving = (
            RolloutDevice.objects.filter(rollout=rollout, notified_at__gt=now - RATE_WINDOW)
            .order_by("notified_at")
            .values_list("notified_at", flat=True)[full - 1 : full]
        )
        at = next(iter(leaving), None)
        frees_in = None if at is None else (at + RATE_WINDOW - now).total_seconds()
    return next_due_in(
        rate_per_minute=rate,
        notified_last_minute=counts.last_minute,
        seconds_since=(now - since).total_seconds(),
        notified_since=counts.since,
        burst=config.policy.rate_burst,
        jitter=config.policy.jitter,
        window_frees_in=frees_in,
        horizon=settings.FLEET_ROLLOUT_TICK_SECONDS,
    )


# --- 4. rolling back -----------------------------------------------------------------------------


def _roll_back(
    rollout: Rollout, config: RolloutConfig, now: datetime, result: Evaluation
) -> Rollout:
    """Re-issue touched devices' previous versions; finish once none is still rolling back."""
    policy = config.policy
    rows = list(
        RolloutDevice.objects.filter(rollout=rollout, attempts__gt=0, state__in=TOUCHED)
        .select_related("device", "artifact", "previous_artifact__model")
        .defer(*_DEVICE_UNUSED)
        .order_by("pk")[:ROLLBACK_BATCH]
    )
    to_issue = []
    for row in rows:
        previous = row.previous_artifact
        if previous is None:
            row.state, row.last_code = D.KEPT, "no_previous_version"
        elif (
            row.state == D.SUCCEEDED
            and row.artifact is not None
            and row.artifact.floor > previous.release_counter
        ):
            # It committed a version whose floor forbids the previous one: the device
            # would refuse it (downgrade_refused), so the control plane does not plan it.
            row.state, row.last_code = D.KEPT, ErrorCode.DOWNGRADE_REFUSED
        elif row.rollback_attempts >= policy.max_attempts:
            row.state = D.ROLLBACK_FAILED
        else:
            to_issue.append(row)
    if to_issue:
        seqs, refused = _issue(
            rollout,
            to_issue,
            {r.device_id: r.previous_artifact for r in to_issue if r.previous_artifact},
            {r.device_id: None for r in to_issue},
        )
        for row in to_issue:
            refusal = refused.get(row.device_id)
            if refusal is not None:
                row.state, row.last_code = D.ROLLBACK_FAILED, str(refusal.code)
                continue
            row.state = D.ROLLING_BACK
            row.rollback_attempts += 1
            row.desired_seq = seqs[row.device_id]
            row.phase_at = now
            row.last_phase = row.last_code = ""
            result.rollback_issued += 1
    rows_update(rows, DEVICE_FIELDS)
    if len(rows) == ROLLBACK_BATCH:
        result.more = True
        return rollout
    if RolloutDevice.objects.filter(rollout=rollout, state=D.ROLLING_BACK).exists():
        result.note = "waiting for devices to report their previous version"
        return rollout
    counts = dict(
        RolloutDevice.objects.filter(
            rollout=rollout, state__in=[D.ROLLED_BACK, D.KEPT, D.ROLLBACK_FAILED]
        )
        .values_list("state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    back, kept, failed = (counts.get(s, 0) for s in (D.ROLLED_BACK, D.KEPT, D.ROLLBACK_FAILED))
    reason = f"{back} device(s) back on their previous version"
    if kept:
        reason += f", {kept} kept theirs (no previous version or below its floor)"
    if failed:
        reason += f", {failed} failed to roll back"
    return rollouts.rollout_finish_rollback(
        rollout=rollout,
        reason=reason,
        figures={"rolled_back": back, "kept": kept, "rollback_failed": failed},
    )
