"""Rollouts: the one module that changes ``Rollout.status``, with an audit row.

Every status change goes through ``_transition()``: it locks the rollout row, refuses a
change the table below does not allow (``conflict``), saves with ``update_fields`` and
writes a ``RolloutAuditEvent`` (who, when, why, and the gate figures behind an engine
decision). Stage advances and promotions keep the status and are audited the same way.

::

    draft -> scheduled -> running <-> paused
                            |  \\          \\
                            |   +----------+-> aborted -> rolled_back
                            +-> completed, or completed_with_failures

Changes made by a person schedule an evaluation once they commit; the engine's own
changes (``by=None``, audited as ``engine``) continue inside the evaluation that made them.

Lock order: the rollout row, then the model row (``schedule``/``start`` lock the model to
check overlap), then devices' desired-state rows (the director) - everywhere, so two
rollouts of one model, or an operator and the engine, cannot deadlock.
"""

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import MODEL_NAME, VERSION
from device_agent.protocol.messages import stored_models
from fleet.bulk import columns_insert
from fleet.errors import ServiceError
from fleet.identifiers import identifier_check
from fleet.models import Device, DynamicGroup, Group
from ota import cohorts
from ota.models import (
    Artifact,
    Model,
    Rollout,
    RolloutAuditEvent,
    RolloutDevice,
    RolloutDeviceState,
    RolloutStatus,
    RolloutStrategy,
)
from ota.rollout_config import (
    Arm,
    Policy,
    Selection,
    Stage,
    arms_parse,
    description_parse,
    phased_arms,
    stages_parse,
)
from ota.rollout_selectors import selection_devices
from ota.selectors import model_get

S = RolloutStatus
TRANSITIONS: Mapping[RolloutStatus, frozenset[RolloutStatus]] = {
    S.DRAFT: frozenset({S.SCHEDULED, S.ABORTED}),
    S.SCHEDULED: frozenset({S.RUNNING, S.DRAFT, S.ABORTED}),
    S.RUNNING: frozenset({S.PAUSED, S.COMPLETED, S.COMPLETED_WITH_FAILURES, S.ABORTED}),
    S.PAUSED: frozenset({S.RUNNING, S.ABORTED}),
    S.ABORTED: frozenset({S.ROLLED_BACK}),
    S.COMPLETED: frozenset(),
    S.COMPLETED_WITH_FAILURES: frozenset(),
    S.ROLLED_BACK: frozenset(),
}
# Statuses in which a rollout holds its devices: another rollout of the same model may not
# target any of them (an aborted one holds them until they are rolled back).
HOLDING = (S.SCHEDULED, S.RUNNING, S.PAUSED, S.ABORTED)
ENGINE = "engine"
# How the engine's pauses and aborts for a gate breach start their audited reason.
GATE_BREACH = "gate breach: "
ROLLOUT_CI_PERMISSIONS = ("ota.add_rollout", "ota.view_rollout")

User = AbstractBaseUser | AnonymousUser


@dataclass(frozen=True)
class RolloutConfig:
    """A rollout's JSON columns, parsed (they were validated when written)."""

    arms: tuple[Arm, ...]
    stages: tuple[Stage, ...]
    selection: Selection
    policy: Policy

    @classmethod
    def of(cls, rollout: Rollout) -> "RolloutConfig":
        phased = rollout.strategy == RolloutStrategy.PHASED
        return cls(
            arms=phased_arms(rollout.version) if phased else arms_parse(rollout.arms),
            stages=stages_parse(rollout.stages, require_full=phased),
            selection=Selection.from_dict(rollout.selection),
            policy=Policy.from_dict(rollout.policy),
        )

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)


# --- the guarded transition ---------------------------------------------------------------


def _actor(by: User | None) -> tuple[Any, str]:
    if by is None:
        return None, ENGINE
    if not by.is_authenticated:
        raise ServiceError(ErrorCode.UNAUTHORIZED, "rollout changes need a signed-in user")
    return by, by.get_username()


def _audit(
    rollout: Rollout,
    *,
    from_status: str,
    to_status: str,
    by: User | None,
    reason: str,
    figures: Mapping[str, Any] | None = None,
) -> RolloutAuditEvent:
    actor, name = _actor(by)
    return RolloutAuditEvent.objects.create(
        rollout=rollout,
        from_status=from_status,
        to_status=to_status,
        actor=actor,
        actor_name=name,
        reason=reason,
        figures=dict(figures or {}),
    )


def _locked(rollout: Rollout) -> Rollout:
    return Rollout.objects.select_for_update().select_related("model").get(pk=rollout.pk)


def _transition(
    rollout: Rollout,
    to: RolloutStatus,
    *,
    by: User | None,
    reason: str,
    figures: Mapping[str, Any] | None = None,
    changes: Mapping[str, Any] | None = None,
    guard: Callable[[Rollout], Mapping[str, Any] | None] | None = None,
    sources: frozenset[RolloutStatus] | None = None,
    action: str = "",
) -> Rollout:
    """Move the rollout to ``to`` under its row lock, or refuse with ``conflict``.

    ``sources`` narrows the table for one service: ``running`` is reached from
    ``scheduled`` by starting and from ``paused`` by resuming, and resuming a scheduled
    rollout must not start it without its devices. ``guard`` runs under the lock after
    the checks; it may refuse (raise) or do the work that belongs to the change
    (materialising devices) and return figures to audit.
    """
    _actor(by)  # refuse an anonymous caller before taking any lock
    with transaction.atomic():
        locked = _locked(rollout)
        current = RolloutStatus(locked.status)
        if sources is not None and current not in sources:
            wanted = " or ".join(sorted(sources))
            raise ServiceError(
                ErrorCode.CONFLICT,
                f"rollout {locked.public_id} is {current}: only a {wanted} rollout can be "
                f"{action or 'changed so'}",
            )
        if to not in TRANSITIONS[current]:
            allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (it is finished)"
            raise ServiceError(
                ErrorCode.CONFLICT,
                f"rollout {locked.public_id} is {current}: it cannot become {to} "
                f"(from {current} it can become {allowed})",
            )
        extra = dict(figures or {})
        if guard is not None:
            extra.update(guard(locked) or {})
        now = timezone.now()
        fields = {"status": to, **(changes or {})}
        if to == S.RUNNING and locked.started_at is None:
            fields["started_at"] = now
        if to in (S.COMPLETED, S.COMPLETED_WITH_FAILURES, S.ABORTED):
            fields["finished_at"] = now
        for name, value in fields.items():
            setattr(locked, name, value)
        locked.save(update_fields=list(fields))
        _audit(locked, from_status=current, to_status=to, by=by, reason=reason, figures=extra)
        if by is not None:
            _evaluate_after_commit(locked)
    return locked


def _evaluate_after_commit(rollout: Rollout) -> None:
    public_id = rollout.public_id
    queue = _evaluation_queue
    if queue is not None:
        transaction.on_commit(lambda: queue(public_id), robust=True)


# How an evaluation is queued: ota.tasks, registered by ota/apps.py. Not imported here,
# as ota.tasks runs the engine, which changes rollouts' status through this module.
_evaluation_queue: Callable[[str], object] | None = None


def evaluation_queue_from(queue: Callable[[str], object]) -> None:
    """Where a status change by an operator queues the rollout's evaluation."""
    global _evaluation_queue
    _evaluation_queue = queue


# --- creating -------------------------------------------------------------------------------


def _published(model: Model, versions: set[str]) -> None:
    found = set(
        Artifact.objects.filter(model=model, version__in=versions).values_list("version", flat=True)
    )
    missing = sorted(versions - found)
    if missing:
        raise ServiceError(
            ErrorCode.NOT_FOUND, f"{model.name} {', '.join(missing)} is not published"
        )


def selection_exists(selection: Selection) -> None:
    for kind, names in ((Group, selection.groups), (DynamicGroup, selection.dynamic_groups)):
        found = set(kind.objects.filter(name__in=names).values_list("name", flat=True))
        missing = sorted(set(names) - found)
        if missing:
            what = "group" if kind is Group else "dynamic group"
            raise ServiceError(ErrorCode.NOT_FOUND, f"no {what} {', '.join(missing)}")


def _describe(selection: Selection) -> str:
    if selection.all:
        parts = ["all devices"]
    else:
        parts = [
            f"{label} {', '.join(values)}"
            for label, values in (
                ("groups", selection.groups),
                ("dynamic groups", selection.dynamic_groups),
                ("devices", selection.devices),
            )
            if values
        ]
    parts += [
        f"{label} {', '.join(values)}"
        for label, values in (("tags", selection.tags), ("hardware", selection.hardware))
        if values
    ]
    return "; ".join(parts)


def _selection_matches(devices: QuerySet[Device], selection: Selection) -> None:
    """Refuse (``empty_selection``) a selection that matches no enabled device: such a
    rollout would notify nobody and end ``completed`` as if it had done its work."""
    if not devices.exists():
        raise ServiceError(
            ErrorCode.EMPTY_SELECTION,
            f"the selection ({_describe(selection)}) matches no enabled device",
        )


def rollout_create(
    *,
    model_name: str,
    strategy: str,
    by: User,
    selection: object,
    version: str = "",
    arms: object = None,
    stages: object = None,
    policy: object = None,
    description: str = "",
    schedule: bool = False,
    starts_at: datetime | None = None,
) -> Rollout:
    """Create a rollout in ``draft`` (``scheduled`` with ``schedule``), validating all of it.

    Refuses ``invalid_identifier``/``invalid_version`` (a name outside its alphabet),
    ``unknown_model``, ``not_found`` (a version not published, a group that does not
    exist), ``malformed`` (stages, arms, selection or policy), ``empty_selection`` (the
    selection matches no enabled device) and, when scheduling, ``conflict`` (another
    rollout of the model holds some of the devices).
    """
    model = model_get(identifier_check(MODEL_NAME, model_name, field="model"))
    if strategy not in RolloutStrategy.values:
        raise ServiceError(ErrorCode.MALFORMED, "strategy must be phased or ab")
    phased = strategy == RolloutStrategy.PHASED
    if phased:
        if arms:
            raise ServiceError(ErrorCode.MALFORMED, "a phased rollout has a version, not arms")
        identifier_check(VERSION, version, field="version")
        parsed_arms = phased_arms(version)
    else:
        if version:
            raise ServiceError(ErrorCode.MALFORMED, "an A/B rollout has arms, not a version")
        parsed_arms = arms_parse(arms)
    parsed_stages = stages_parse(stages, require_full=phased)
    parsed_selection = Selection.from_dict(selection, new=True)
    parsed_policy = Policy.from_dict(policy)
    _published(model, {a.version for a in parsed_arms})
    selection_exists(parsed_selection)
    _selection_matches(selection_devices(parsed_selection), parsed_selection)
    with transaction.atomic():
        rollout = Rollout.objects.create(
            model=model,
            strategy=strategy,
            version=version if phased else "",
            description=description_parse(description),
            selection=parsed_selection.to_dict(),
            stages=[{"percent": s.percent, "bake_minutes": s.bake_minutes} for s in parsed_stages],
            arms=[] if phased else [asdict(a) for a in parsed_arms],
            policy=parsed_policy.to_dict(),
            created_by=_actor(by)[0],
        )
        _audit(rollout, from_status="", to_status=S.DRAFT, by=by, reason="created")
        if schedule:
            rollout = rollout_schedule(rollout=rollout, by=by, starts_at=starts_at)
    return rollout


# --- overlap --------------------------------------------------------------------------------


def _overlap_check(rollout: Rollout, devices: QuerySet[Device]) -> None:
    """Refuse (``conflict``) when another rollout of the model holds any of ``devices``.

    Called with the model row locked, so two rollouts of one model are checked one after
    the other and cannot both pass.
    """
    Model.objects.select_for_update().filter(pk=rollout.model_id).first()
    others = (
        Rollout.objects.filter(model_id=rollout.model_id, status__in=HOLDING)
        .exclude(pk=rollout.pk)
        .order_by("pk")
    )
    for other in others:
        if other.status == S.SCHEDULED:
            common = devices.filter(
                pk__in=selection_devices(Selection.from_dict(other.selection)).values("pk")
            )
        else:
            common = devices.filter(
                pk__in=RolloutDevice.objects.filter(rollout=other)
                .exclude(state=RolloutDeviceState.SKIPPED)
                .values("device_id")
            )
        sample = list(common.order_by("device_id").values_list("device_id", flat=True)[:5])
        if sample:
            count = common.count()
            raise ServiceError(
                ErrorCode.CONFLICT,
                f"rollout {other.public_id} ({other.status}) of {rollout.model.name} already "
                f"targets {count} of the selected devices ({', '.join(sample)}"
                f"{', ...' if count > len(sample) else ''}); finish or abort it, or narrow "
                "the selection",
            )


# --- people's changes ------------------------------------------------------------------------


def rollout_schedule(
    *, rollout: Rollout, by: User | None, starts_at: datetime | None = None, reason: str = ""
) -> Rollout:
    """``draft`` -> ``scheduled``: frozen, overlap-checked, waiting for its start.

    With ``starts_at`` the engine starts it then; without, an operator starts it.
    """

    def guard(locked: Rollout) -> dict[str, Any]:
        config = RolloutConfig.of(locked)
        devices = selection_devices(config.selection)
        _selection_matches(devices, config.selection)
        _overlap_check(locked, devices)
        return {"selected": devices.count()}

    changes = {"starts_at": starts_at}
    when = f" to start at {starts_at.isoformat()}" if starts_at else " (waits for an operator)"
    return _transition(
        rollout,
        S.SCHEDULED,
        by=by,
        reason=reason or f"scheduled{when}",
        changes=changes,
        guard=guard,
        sources=frozenset({S.DRAFT}),
        action="scheduled",
    )


def rollout_unschedule(*, rollout: Rollout, by: User, reason: str = "") -> Rollout:
    """``scheduled`` -> ``draft``."""
    return _transition(
        rollout,
        S.DRAFT,
        by=by,
        reason=reason or "unscheduled",
        changes={"starts_at": None},
        sources=frozenset({S.SCHEDULED}),
        action="unscheduled",
    )


def rollout_start(*, rollout: Rollout, by: User | None, reason: str = "") -> Rollout:
    """Start now: a draft is scheduled first (two audit rows), then it runs.

    Starting resolves the selection once: one ``RolloutDevice`` per device with its
    bucket, arm and the artifact built for its hardware, or ``skipped`` (``hw_mismatch``
    when the arm's version has no variant for it, ``downgrade_refused`` when the device
    runs a version whose floor is above it). Devices enrolled later are not added.
    """
    if rollout.status == S.DRAFT:
        rollout = rollout_schedule(rollout=rollout, by=by, reason="scheduled to start now")
    return _transition(
        rollout,
        S.RUNNING,
        by=by,
        reason=reason or "started",
        changes={"current_stage": 0, "stage_settled_at": None, "stage_started_at": timezone.now()},
        guard=_materialize,
        sources=frozenset({S.SCHEDULED}),
        action="started",
    )


def rollout_pause(
    *,
    rollout: Rollout,
    by: User | None,
    reason: str,
    figures: Mapping[str, Any] | None = None,
) -> Rollout:
    """``running`` -> ``paused``: no device is notified until it resumes; devices already
    notified go on and are still tracked."""
    return _transition(
        rollout,
        S.PAUSED,
        by=by,
        reason=reason,
        figures=figures,
        sources=frozenset({S.RUNNING}),
        action="paused",
    )


def rollout_resume(*, rollout: Rollout, by: User, reason: str = "") -> Rollout:
    """``paused`` -> ``running``.

    Resuming acknowledges the failures so far: from now on the install-failure gate
    judges only devices that finish after the resume (again once ``min_finished`` of them
    have), so a rollout paused by a breach can go on once an operator has looked at it.
    Telemetry gates compare the arms as before.
    """
    return _transition(
        rollout,
        S.RUNNING,
        by=by,
        reason=reason or "resumed",
        changes={"gates_since": timezone.now()},
        sources=frozenset({S.PAUSED}),
        action="resumed",
    )


def rollout_abort(
    *,
    rollout: Rollout,
    by: User | None,
    reason: str,
    figures: Mapping[str, Any] | None = None,
) -> Rollout:
    """-> ``aborted``: nothing more is notified and every touched device gets its previous
    version again through the director; ``rolled_back`` follows once they all reported."""
    return _transition(
        rollout,
        S.ABORTED,
        by=by,
        reason=reason,
        figures=figures,
        sources=frozenset({S.DRAFT, S.SCHEDULED, S.RUNNING, S.PAUSED}),
        action="aborted",
    )


def rollout_promote(*, rollout: Rollout, arm: str, by: User | None, reason: str = "") -> Rollout:
    """A/B: deploy the winning ``arm``'s version to every device of the rollout.

    Devices of the other arms are re-targeted to the winner's variant for their hardware
    and notified again at the rollout's pace; devices not exposed yet get it too. A
    device whose hardware has no variant of the winner keeps its arm's version.
    """
    with transaction.atomic():
        locked = _locked(rollout)
        if locked.strategy != RolloutStrategy.AB:
            raise ServiceError(ErrorCode.CONFLICT, f"{locked.public_id} is not an A/B rollout")
        if locked.status not in (S.RUNNING, S.PAUSED):
            raise ServiceError(
                ErrorCode.CONFLICT,
                f"rollout {locked.public_id} is {locked.status}: only a running or paused "
                "rollout can be promoted",
            )
        if locked.promoted_arm:
            raise ServiceError(
                ErrorCode.CONFLICT,
                f"rollout {locked.public_id} already promoted arm {locked.promoted_arm}",
            )
        winner = RolloutConfig.of(locked).arm(arm)
        if winner is None:
            raise ServiceError(ErrorCode.NOT_FOUND, f"rollout {locked.public_id} has no arm {arm}")
        variants = {
            a.hardware: a
            for a in Artifact.objects.filter(model=locked.model, version=winner.version)
        }
        retargeted = 0
        for hardware, artifact in variants.items():
            retargeted += (
                RolloutDevice.objects.filter(rollout=locked, device__hardware=hardware)
                .exclude(Q(arm=winner.name) | Q(state=RolloutDeviceState.SKIPPED))
                .update(
                    artifact=artifact,
                    state=RolloutDeviceState.PENDING,
                    attempts=0,
                    last_phase="",
                    last_code="",
                )
            )
        locked.promoted_arm = winner.name
        locked.version = winner.version
        locked.stage_settled_at = None
        locked.save(update_fields=["promoted_arm", "version", "stage_settled_at"])
        _audit(
            locked,
            from_status=locked.status,
            to_status=locked.status,
            by=by,
            reason=reason or f"promoted arm {winner.name} ({winner.version})",
            figures={"arm": winner.name, "version": winner.version, "retargeted": retargeted},
        )
        if by is not None:
            _evaluate_after_commit(locked)
    return locked


# --- the engine's changes -------------------------------------------------------------------


def rollout_start_due(*, rollout: Rollout, now: datetime) -> Rollout:
    """The engine starts a scheduled rollout whose ``starts_at`` has come."""
    return rollout_start(rollout=rollout, by=None, reason=f"start time {now.isoformat()} reached")


def rollout_complete(
    *, rollout: Rollout, figures: Mapping[str, Any], failures: str = ""
) -> Rollout:
    """``running`` -> ``completed``: the last stage finished and baked with the gates ok.

    With ``failures`` (which arms failed more than the install gate allows, over the whole
    rollout: failures an operator acknowledged by resuming) it ends
    ``completed_with_failures`` instead, saying so in the audit.
    """
    if failures:
        return _transition(
            rollout,
            S.COMPLETED_WITH_FAILURES,
            by=None,
            reason=f"every stage finished, with failures: {failures}",
            figures=figures,
        )
    return _transition(
        rollout, S.COMPLETED, by=None, reason="every stage finished", figures=figures
    )


def rollout_resume_cleared(*, rollout: Rollout, reason: str, figures: Mapping[str, Any]) -> Rollout:
    """``paused`` -> ``running`` by the engine: the gate breach it paused for has cleared
    (a device that had timed out came back and succeeded). Unlike an operator's resume it
    acknowledges nothing: the gates go on counting every failure."""
    return _transition(
        rollout,
        S.RUNNING,
        by=None,
        reason=reason,
        figures=figures,
        sources=frozenset({S.PAUSED}),
        action="resumed",
    )


def rollout_pause_breaches(rollout: Rollout) -> list[str]:
    """The gates whose breach made the engine pause the rollout last; [] when the latest
    pause was an operator's (or not for a breach)."""
    last = (
        RolloutAuditEvent.objects.filter(rollout=rollout, to_status=S.PAUSED)
        .exclude(from_status=S.PAUSED)
        .order_by("-pk")
        .values_list("actor_name", "reason", "figures")
        .first()
    )
    if last is None or last[0] != ENGINE or not last[1].startswith(GATE_BREACH):
        return []
    gates = last[2].get("gates") if isinstance(last[2], dict) else None
    return [str(g.get("gate")) for g in gates if isinstance(g, dict)] if gates else []


def rollout_finish_rollback(
    *, rollout: Rollout, reason: str, figures: Mapping[str, Any]
) -> Rollout:
    """``aborted`` -> ``rolled_back``: every touched device reported (see the engine)."""
    return _transition(rollout, S.ROLLED_BACK, by=None, reason=reason, figures=figures)


def rollout_stage_advance(*, rollout: Rollout, stage: int, figures: Mapping[str, Any]) -> Rollout:
    """Open the next stage (same status, audited). The caller holds the row lock."""
    with transaction.atomic():
        locked = _locked(rollout)
        if locked.status != S.RUNNING or stage != locked.current_stage + 1:
            raise ServiceError(
                ErrorCode.CONFLICT,
                f"rollout {locked.public_id} cannot open stage {stage} "
                f"({locked.status}, at stage {locked.current_stage})",
            )
        percent = RolloutConfig.of(locked).stages[stage].percent
        locked.current_stage = stage
        locked.stage_started_at = timezone.now()
        locked.stage_settled_at = None
        locked.save(update_fields=["current_stage", "stage_started_at", "stage_settled_at"])
        _audit(
            locked,
            from_status=locked.status,
            to_status=locked.status,
            by=None,
            reason=f"stage {stage + 1} ({percent:g} %) opened",
            figures=figures,
        )
    return locked


# --- materialising devices -------------------------------------------------------------------


def _installed_version(reported: object, model: str) -> str | None:
    return next((m.version for m in stored_models(reported) if m.name == model), None)


def _materialize(rollout: Rollout) -> dict[str, Any]:
    """Create the rollout's device rows (the guard of ``scheduled -> running``)."""
    config = RolloutConfig.of(rollout)
    devices = selection_devices(config.selection)
    _selection_matches(devices, config.selection)
    _overlap_check(rollout, devices)
    model = rollout.model
    variants: dict[tuple[str, str], Artifact] = {}
    floors: dict[tuple[str, str], int] = {}
    for variant in Artifact.objects.filter(model=model):
        variants[(variant.version, variant.hardware)] = variant
        floors[(variant.version, variant.hardware)] = variant.floor
    columns: dict[str, list[object]] = {
        name: [] for name in ("device", "arm", "bucket", "artifact", "state", "last_code")
    }
    skipped = 0
    taking: list[float] = []
    public_id = rollout.public_id
    for pk, device_id, hardware, reported in (
        devices.order_by("pk")
        .values_list("pk", "device_id", "hardware", "reported")
        .iterator(chunk_size=2000)
    ):
        bucket, arm = cohorts.assign(public_id, device_id, config.arms)
        artifact = variants.get((arm.version, hardware))
        state, code = RolloutDeviceState.PENDING, ""
        if artifact is None:
            state, code = RolloutDeviceState.SKIPPED, ErrorCode.HW_MISMATCH
        else:
            installed = _installed_version(reported, model.name)
            floor = floors.get((installed, hardware), 0) if installed else 0
            if artifact.release_counter < floor:
                state, code = RolloutDeviceState.SKIPPED, ErrorCode.DOWNGRADE_REFUSED
        skipped += state == RolloutDeviceState.SKIPPED
        if state != RolloutDeviceState.SKIPPED:
            # Stages count the devices that can take the version: a skipped one never is.
            taking.append(bucket)
        for name, value in (
            ("device", pk),
            ("arm", arm.name),
            ("bucket", bucket),
            ("artifact", artifact.pk if artifact is not None else None),
            ("state", state),
            ("last_code", str(code)),
        ):
            columns[name].append(value)
    count = len(columns["device"])
    bounds = cohorts.stage_bounds(taking, [s.percent for s in config.stages])
    rollout.stage_bounds = bounds
    Rollout.objects.filter(pk=rollout.pk).update(stage_bounds=bounds)
    # Straight from the values: a model instance per device and bulk_create's prepared
    # statement cost more than the rest of a large start.
    columns_insert(RolloutDevice, {"rollout": [rollout.pk] * count, **columns})
    return {"devices": count, "skipped": skipped}
