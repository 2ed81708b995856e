"""Reads of rollouts: lookups by public id, the devices a selection means, progress."""

import re
from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import rollout_number
from fleet.errors import ServiceError
from fleet.models import Device, DynamicGroup
from fleet.selectors import dynamic_group_devices
from ota.models import (
    Rollout,
    RolloutAuditEvent,
    RolloutDevice,
    RolloutDeviceState,
    RolloutStatus,
)
from ota.rollout_config import Selection
from telemetry.metrics import (
    GATE_BREACHED,
    GATE_INSUFFICIENT_DATA,
    GATE_PASSING,
    GateFigure,
    RolloutArmProgress,
)

_PUBLIC_ID_RE = re.compile(r"r-([1-9][0-9]{0,17})")


def rollout_pk(public_id: str) -> int | None:
    """The primary key behind ``r-<n>``, or None for anything else (other systems' ids)."""
    match = _PUBLIC_ID_RE.fullmatch(public_id)
    return int(match[1]) if match else None


def rollout_issued_count(public_id: str) -> int | None:
    """How many envelopes the engine has issued for ``r-<n>`` (None: no such rollout)."""
    pk = rollout_pk(public_id)
    if pk is None:
        return None
    return Rollout.objects.filter(pk=pk).values_list("issued_count", flat=True).first()


def rollout_get(public_id: str) -> Rollout:
    """The rollout ``r-<n>`` (or ``<n>``), or a ``not_found`` refusal."""
    # ASCII digits only (identifiers.ROLLOUT_ID): str.isdigit() is true for "²", int() is not.
    pk = rollout_number(public_id)
    rollout = (
        Rollout.objects.select_related("model", "created_by").filter(pk=pk).first() if pk else None
    )
    if rollout is None:
        raise ServiceError(ErrorCode.NOT_FOUND, f"no rollout {public_id}")
    return rollout


def rollout_list(*, model: str | None = None, status: str | None = None) -> QuerySet[Rollout]:
    qs = Rollout.objects.select_related("model", "created_by")
    if model:
        qs = qs.filter(model__name=model)
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-pk")


def rollouts_to_evaluate() -> QuerySet[Rollout]:
    """Rollouts the beat tick looks at: waiting to start, running, paused, rolling back."""
    return Rollout.objects.filter(
        status__in=[
            RolloutStatus.SCHEDULED,
            RolloutStatus.RUNNING,
            RolloutStatus.PAUSED,
            RolloutStatus.ABORTED,
        ]
    ).order_by("pk")


def selection_devices(selection: Selection) -> QuerySet[Device]:
    """The enabled devices a selection means now (see ``Selection``), without duplicates.

    Every criterion is a ``pk IN (subquery)`` rather than a join, so a device in two of
    the groups is listed once and the whole stays one query.
    """
    qs = Device.objects.enabled()
    if not selection.all:
        sources = Q(pk__in=Device.objects.filter(groups__name__in=selection.groups).values("pk"))
        if selection.devices:
            sources |= Q(device_id__in=selection.devices)
        for group in DynamicGroup.objects.filter(name__in=selection.dynamic_groups):
            sources |= Q(pk__in=dynamic_group_devices(group).values("pk"))
        if selection.groups or selection.dynamic_groups or selection.devices:
            qs = qs.filter(sources)
    for tag in selection.tags:
        qs = qs.filter(pk__in=Device.objects.filter(tags__name=tag).values("pk"))
    if selection.hardware:
        qs = qs.filter(hardware__in=selection.hardware)
    return qs


def rollout_progress(rollout: Rollout) -> dict[str, Any]:
    """Device counts by arm and state, and in total by state."""
    by_arm: dict[str, dict[str, int]] = defaultdict(dict)
    total: dict[str, int] = defaultdict(int)
    rows = (
        RolloutDevice.objects.filter(rollout=rollout)
        .values("arm", "state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for row in rows:
        by_arm[row["arm"]][row["state"]] = row["n"]
        total[row["state"]] += row["n"]
    return {"total": dict(total), "arms": dict(by_arm), "devices": sum(total.values())}


def rollout_devices(
    rollout: Rollout, *, state: str | None = None, arm: str | None = None
) -> QuerySet[RolloutDevice]:
    qs = RolloutDevice.objects.filter(rollout=rollout).select_related(
        "device", "artifact", "previous_artifact"
    )
    if state:
        qs = qs.filter(state=state)
    if arm:
        qs = qs.filter(arm=arm)
    return qs


def rollout_audit(rollout: Rollout) -> QuerySet[RolloutAuditEvent]:
    return (
        RolloutAuditEvent.objects.filter(rollout=rollout)
        .select_related("actor")
        .order_by("at", "pk")
    )


# How long a finished rollout is still exported to Prometheus (bounded `rollout` label).
METRICS_FINISHED_FOR = timedelta(days=1)


def rollout_arm_progress() -> list[RolloutArmProgress]:
    """Rollout progress for Prometheus (``telemetry.metrics.RolloutProgressSource``).

    Unfinished rollouts and those finished within a day; per arm (a phased rollout's one
    arm is ``main``, as in the admin and the telemetry store): devices by state, failures
    by code, and the gates as last evaluated.
    """
    since = timezone.now() - METRICS_FINISHED_FOR
    rollouts = list(
        Rollout.objects.select_related("model")
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=since))
        .exclude(status=RolloutStatus.DRAFT)
        .order_by("pk")
    )
    if not rollouts:
        return []
    devices: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
    for rollout_id, arm, state, n in (
        RolloutDevice.objects.filter(rollout__in=rollouts)
        .values_list("rollout_id", "arm", "state")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        # Every state from zero, so a state's first devices show as a rise from 0.
        counts = devices.setdefault((rollout_id, arm), dict.fromkeys(RolloutDeviceState.values, 0))
        counts[state] = n
    failures: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
    for rollout_id, arm, code, n in (
        RolloutDevice.objects.filter(
            rollout__in=rollouts,
            state__in=[
                RolloutDeviceState.FAILED,
                RolloutDeviceState.TIMED_OUT,
                RolloutDeviceState.ROLLBACK_FAILED,
            ],
        )
        .values_list("rollout_id", "arm", "last_code")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        failures[(rollout_id, arm)][code or "unknown"] = n
    progress = []
    for rollout in rollouts:
        arms = sorted({arm for rid, arm in devices if rid == rollout.pk})
        stages = rollout.stages if isinstance(rollout.stages, list) else []
        stage = stages[rollout.current_stage] if rollout.current_stage < len(stages) else {}
        for arm in arms:
            progress.append(
                RolloutArmProgress(
                    rollout=rollout.public_id,
                    model=rollout.model.name,
                    strategy=rollout.strategy,
                    state=rollout.status,
                    stage=rollout.current_stage,
                    stage_percent=100.0 if rollout.promoted_arm else stage.get("percent", 0.0),
                    arm=arm,
                    devices=devices[(rollout.pk, arm)],
                    failures=failures.get((rollout.pk, arm), {}),
                    gates=_gate_figures(rollout.gate_figures, arm),
                    finished=rollout.finished_at is not None,
                    created=rollout.created_at,
                )
            )
    return progress


def _gate_figures(figures: object, arm: str) -> dict[str, GateFigure]:
    """One arm's gates from ``Rollout.gate_figures`` (see ``ota.gates.GateResult``), each
    with the engine's verdict for that arm: a gate that has not judged yet is
    ``insufficient_data``, never ``passing``."""
    gates = figures.get("gates") if isinstance(figures, dict) else None
    out: dict[str, GateFigure] = {}
    for gate in gates if isinstance(gates, list) else ():
        name, data = gate.get("gate", ""), gate.get("figures") or {}
        if name == "install_failure_rate":
            mine = (data.get("arms") or {}).get(arm)
            if mine is not None:
                threshold = float(data["max_failure_rate"])
                judged = mine.get("judged", mine["finished"] >= data["min_finished"])
                if not judged:
                    state = GATE_INSUFFICIENT_DATA
                elif mine["failure_rate"] > threshold:
                    state = GATE_BREACHED
                else:
                    state = GATE_PASSING
                value = mine["failure_rate"] if mine["finished"] else None
                out[name] = GateFigure(value=value, threshold=threshold, state=state)
        elif name.startswith("telemetry:"):
            label = f"{data.get('metric')}_{data.get('statistic')}"
            for comparison in data.get("comparisons") or ():
                if comparison.get("arm") != arm:
                    continue
                if comparison.get("worse"):
                    state = GATE_BREACHED
                elif comparison.get("enough") and comparison.get("relative_change") is not None:
                    state = GATE_PASSING
                else:
                    state = GATE_INSUFFICIENT_DATA
                out[label] = GateFigure(
                    value=comparison.get("relative_change"),
                    threshold=float(data.get("max_relative_change", 0.0)),
                    state=state,
                )
    return out
