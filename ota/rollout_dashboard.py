"""Read-only figures for the operator dashboard (the admin's rollout page and overview).

Everything here reads; status changes stay with ``ota/rollouts.py``. Each function costs
a bounded number of queries whatever the fleet size (grouped counts, never a row per
device).
"""

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, overload

from django.db.models import Count, Q, QuerySet

from device_agent.protocol.messages import Phase
from fleet.errors import ServiceError
from fleet.identifiers import PHASED_ARM
from fleet.models import UPDATE_FAILURE_PHASES, Device, DeviceEvent
from fleet.selectors import installed_counts
from ota.cohorts import stage_size
from ota.models import (
    Rollout,
    RolloutDevice,
    RolloutDeviceState,
    RolloutStatus,
    RolloutStrategy,
)
from ota.rollout_config import Policy, Selection, arms_parse, stages_parse

D = RolloutDeviceState
# A stored document the display must survive: shown as unreadable, never a server error.
_UNREADABLE = (ServiceError, TypeError, ValueError, KeyError)

# The states an operator reads a rollout by, in the order a device goes through them.
# ``in_progress`` is split by the last phase the device reported.
DISPLAY_STATES: tuple[tuple[str, str], ...] = (
    ("pending", "pending"),
    ("notified", "notified"),
    ("downloading", "downloading"),
    ("installing", "installing"),
    ("succeeded", "succeeded"),
    ("failed", "failed"),
    ("timed_out", "timed out"),
    ("rolling_back", "rolling back"),
    ("rolled_back", "rolled back"),
    ("rollback_failed", "rollback failed"),
    ("kept", "kept"),
    ("skipped", "skipped"),
)
_DOWNLOAD_PHASES = {"", Phase.ACCEPTED, Phase.DOWNLOADING}
# Update events that say an update did not work; indexed by time for these pages.
FAILURE_PHASES = UPDATE_FAILURE_PHASES
FAILURE_STATES = (D.FAILED, D.TIMED_OUT, D.ROLLBACK_FAILED)
FINISHED_STATES = {
    "succeeded",
    "failed",
    "timed_out",
    "rolled_back",
    "rollback_failed",
    "kept",
    "skipped",
}


def display_state(state: str, last_phase: str) -> str:
    if state == D.IN_PROGRESS:
        return "downloading" if last_phase in _DOWNLOAD_PHASES else "installing"
    return state


@dataclass
class Segment:
    state: str
    label: str
    count: int
    percent: float


@dataclass
class ArmProgress:
    name: str
    version: str
    devices: int
    segments: list[Segment] = field(default_factory=list)

    @property
    def finished_percent(self) -> float:
        done = sum(s.count for s in self.segments if s.state in FINISHED_STATES)
        return 100.0 * done / self.devices if self.devices else 0.0


def _arm_versions(rollout: Rollout) -> dict[str, str]:
    if rollout.strategy == RolloutStrategy.PHASED:
        return {PHASED_ARM: rollout.version}
    try:
        return {a.name: a.version for a in arms_parse(rollout.arms)}
    except _UNREADABLE:
        return {}


def arm_progress(rollout: Rollout) -> list[ArmProgress]:
    """Per arm, devices by display state (one grouped query)."""
    return arms_progress([rollout])[rollout.pk]


def arms_progress(rollouts: list[Rollout]) -> dict[int, list[ArmProgress]]:
    """``arm_progress`` of several rollouts in one grouped query."""
    counts: dict[int, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    rows = (
        RolloutDevice.objects.filter(rollout__in=[r.pk for r in rollouts])
        .values_list("rollout_id", "arm", "state", "last_phase")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for rollout_id, arm, state, phase, n in rows:
        counts[rollout_id][arm][display_state(state, phase)] += n
    return {rollout.pk: _arms(rollout, counts.get(rollout.pk, {})) for rollout in rollouts}


def _arms(rollout: Rollout, mine: dict[str, dict[str, int]]) -> list[ArmProgress]:
    versions = _arm_versions(rollout)
    arms = []
    for name in list(versions) + sorted(set(mine) - set(versions)):
        by_state = mine.get(name, {})
        total = sum(by_state.values())
        progress = ArmProgress(name=name, version=versions.get(name, "?"), devices=total)
        for state, label in DISPLAY_STATES:
            n = by_state.get(state, 0)
            if n:
                progress.segments.append(Segment(state, label, n, 100.0 * n / total))
        arms.append(progress)
    return arms


@dataclass(frozen=True)
class DeviceCounts:
    """A rollout's devices counted by (arm, state, last phase, last code): one grouped
    query from which the rollout page draws its progress bars, its failures by code and
    the size of any page of its devices table (the table's filters are these columns)."""

    rows: list[tuple[str, str, str, str, int]]

    @classmethod
    def of(cls, rollout: Rollout) -> "DeviceCounts":
        return cls(
            list(
                RolloutDevice.objects.filter(rollout=rollout)
                .values_list("arm", "state", "last_phase", "last_code")
                .annotate(n=Count("pk"))
                .order_by()
            )
        )

    def arms(self, rollout: Rollout) -> list[ArmProgress]:
        """``arm_progress`` without a query of its own."""
        mine: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for arm, state, phase, _code, n in self.rows:
            mine[arm][display_state(state, phase)] += n
        return _arms(rollout, mine)

    def failures(self) -> list[tuple[str, str, int]]:
        """(code, arm, devices) of the failed, timed-out and unrolled-back devices, most
        first."""
        by_code: dict[tuple[str, str], int] = defaultdict(int)
        for arm, state, _phase, code, n in self.rows:
            if state in FAILURE_STATES:
                by_code[(code or "unknown", arm)] += n
        return sorted(((c, a, n) for (c, a), n in by_code.items()), key=lambda r: (-r[2], r[0]))

    def matching(self, *, state: str = "", arm: str = "", code: str = "") -> int:
        """How many devices ``devices_page_queryset`` selects with these filters."""
        return sum(
            n
            for row_arm, row_state, phase, row_code, n in self.rows
            if _matches(row_arm, row_state, phase, row_code, state=state, arm=arm, code=code)
        )


def _matches(
    row_arm: str, row_state: str, phase: str, row_code: str, *, state: str, arm: str, code: str
) -> bool:
    # The same filters as devices_page_queryset, on one group of the counts.
    if state == "downloading":
        if row_state != D.IN_PROGRESS or phase not in _DOWNLOAD_PHASES:
            return False
    elif state == "installing":
        if row_state != D.IN_PROGRESS or phase in _DOWNLOAD_PHASES:
            return False
    elif state and row_state != state:
        return False
    if arm and row_arm != arm:
        return False
    if code == "unknown":
        return row_code == "" and row_state in FAILURE_STATES
    return not code or row_code == code


@dataclass
class StageRow:
    number: int
    percent: float
    devices: int
    bake_minutes: float
    state: str  # done, current, next
    bake_ends: datetime | None = None
    note: str = ""


def stage_timeline(rollout: Rollout, devices: int) -> list[StageRow]:
    """Each stage's share, the devices it reaches in all, and when its bake ends."""
    try:
        stages = stages_parse(rollout.stages, require_full=False)
    except _UNREADABLE:
        return []
    out = []
    finished = rollout.status not in ("draft", "scheduled", "running", "paused")
    for i, stage in enumerate(stages):
        row = StageRow(
            i + 1, stage.percent, stage_size(stage.percent, devices), stage.bake_minutes, "next"
        )
        if (
            rollout.promoted_arm
            or i < rollout.current_stage
            or (finished and i == rollout.current_stage)
        ):
            row.state = "done"
        elif i == rollout.current_stage and rollout.status in ("running", "paused"):
            row.state = "current"
            if rollout.stage_settled_at is not None:
                row.bake_ends = rollout.stage_settled_at + timedelta(minutes=stage.bake_minutes)
            else:
                row.note = (
                    f"bakes {stage.bake_minutes:g} min once every device of it has finished"
                    if stage.bake_minutes
                    else "opens the next stage once every device of it has finished"
                )
        else:
            row.note = f"opens after stage {i} has finished and baked" if i else "opens at start"
        out.append(row)
    return out


@dataclass
class GateRow:
    gate: str
    arm: str
    value: str
    threshold: str
    verdict: str  # ok, breach, insufficient_data
    detail: str


def _pct(value: object) -> str:
    return f"{float(value) * 100:.1f} %" if isinstance(value, int | float) else "-"


def gate_rows(rollout: Rollout) -> list[GateRow]:
    """The gates as last evaluated: per arm, value against threshold and the verdict."""
    figures = rollout.gate_figures if isinstance(rollout.gate_figures, dict) else {}
    gates = figures.get("gates")
    out: list[GateRow] = []
    for gate in gates if isinstance(gates, list) else ():
        if not isinstance(gate, dict):
            continue
        name, status = str(gate.get("gate", "")), str(gate.get("status", ""))
        raw = gate.get("figures")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        detail = str(gate.get("detail", ""))
        if name == "install_failure_rate":
            limit = data.get("max_failure_rate")
            for arm, mine in (data.get("arms") or {}).items():
                judged = mine.get("judged", True)
                verdict = (
                    "insufficient_data"
                    if not judged
                    else "breach"
                    if isinstance(limit, int | float) and mine.get("failure_rate", 0) > limit
                    else "ok"
                )
                value = (
                    f"{_pct(mine.get('failure_rate'))} "
                    f"({mine.get('failed', 0) + mine.get('timed_out', 0)} of "
                    f"{mine.get('finished', 0)} finished failed)"
                )
                threshold = (
                    f"at most {_pct(limit)}, judged from {data.get('min_finished')} finished"
                )
                out.append(GateRow("install failure rate", arm, value, threshold, verdict, detail))
        elif name.startswith("telemetry:"):
            label = f"{data.get('statistic')} {data.get('metric')} ({data.get('better')} is better)"
            limit = data.get("max_relative_change")
            for cmp in data.get("comparisons") or ():
                change = cmp.get("relative_change")
                if not cmp.get("enough"):
                    value, verdict = (
                        f"{cmp.get('n_arm')} vs {cmp.get('n_baseline')} devices reporting",
                        "insufficient_data",
                    )
                else:
                    value = (
                        f"median {cmp.get('arm_median'):.4g} vs {cmp.get('baseline_median'):.4g} "
                        f"({change * 100:+.1f} %, p = {cmp.get('p_worse'):.2g})"
                        if isinstance(change, int | float)
                        else "-"
                    )
                    verdict = "breach" if cmp.get("worse") else "ok"
                threshold = f"no worse than {_pct(limit)} vs {cmp.get('baseline')}"
                out.append(GateRow(label, str(cmp.get("arm")), value, threshold, verdict, detail))
        else:
            out.append(GateRow(name, "", "", "", status, detail))
    return out


def _names(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def selection_sentences(rollout: Rollout) -> list[str]:
    try:
        s = Selection.from_dict(rollout.selection)
    except _UNREADABLE:
        return ["The stored selection cannot be read."]
    sources = []
    if s.all:
        sources.append("every enabled device of the fleet")
    if s.groups:
        sources.append(f"devices in the groups {_names(s.groups)}")
    if s.dynamic_groups:
        sources.append(f"devices in the dynamic groups {_names(s.dynamic_groups)}")
    if s.devices:
        shown = _names(s.devices[:10]) + (
            f" and {len(s.devices) - 10} more" if len(s.devices) > 10 else ""
        )
        sources.append(f"the devices {shown}")
    out = [
        ("Targets " + "; or ".join(sources) + ".") if sources else "Targets every enabled device."
    ]
    if s.tags:
        out.append(f"Only devices tagged with all of: {_names(s.tags)}.")
    if s.hardware:
        out.append(f"Only devices whose hardware is one of: {_names(s.hardware)}.")
    return out


def policy_sentences(rollout: Rollout) -> list[str]:
    try:
        p = Policy.from_dict(rollout.policy)
    except _UNREADABLE:
        return ["The stored policy cannot be read."]
    out = [
        "On a gate breach the rollout is "
        + ("paused." if p.on_breach == "pause" else "aborted and rolled back."),
        f"The install gate breaches when more than {p.max_failure_rate * 100:g} % of an arm's "
        f"finished devices failed, judged once {p.min_finished} have finished "
        "(or the stage is over).",
        f"A device with no news for {p.device_timeout_minutes:g} minutes times out; "
        + (
            f"a failed device is tried again up to {p.retries} times."
            if p.retries
            else "failed devices are not retried."
        ),
    ]
    pace = f"Notifies up to {p.rate_per_minute:g} devices a minute"
    if p.rate_growth_factor > 1 and p.rate_growth_every:
        pace += (
            f", growing ×{p.rate_growth_factor:g} every {p.rate_growth_every} devices "
            f"{p.rate_growth_on}, up to {p.rate_max_per_minute:g} a minute"
        )
    if p.rate_burst is not None:
        pace += f"; at most {p.rate_burst} at once when a stage opens"
    out.append(pace + ".")
    if p.window:
        w = p.window
        out.append(
            f"New devices are notified only {', '.join(w.days)} between "
            f"{w.start:%H:%M} and {w.end:%H:%M} ({w.timezone})."
        )
    for g in p.telemetry_gates:
        out.append(
            f"Telemetry gate: an arm breaches when its {g.statistic} {g.metric} is worse than "
            f"the baseline's by more than {g.max_relative_change * 100:g} % ({g.better} is "
            f"better, p < {g.alpha:g}, from {g.min_devices} devices per arm"
            + (", required to advance" if g.required else "")
            + ")."
        )
    if rollout.strategy == RolloutStrategy.AB:
        pr = p.promotion
        if pr.mode == "auto":
            out.append(
                f"Promotes automatically the arm whose {pr.statistic} {pr.metric} is "
                f"better ({pr.better}) by at least {pr.min_relative_change * 100:g} % "
                f"(p < {pr.alpha:g}, {pr.min_devices} devices per arm); when inconclusive it "
                + (
                    "waits for an operator."
                    if pr.on_inconclusive == "wait"
                    else "promotes the baseline."
                )
            )
        else:
            out.append("An operator promotes the winning arm.")
    return out


def arms_table(rollout: Rollout) -> list[dict[str, Any]]:
    if rollout.strategy == RolloutStrategy.PHASED:
        return []
    try:
        arms = arms_parse(rollout.arms)
    except _UNREADABLE:
        return []
    total = sum(a.weight for a in arms)
    return [
        {
            "name": a.name,
            "version": a.version,
            "share": 100.0 * a.weight / total,
            "baseline": a.baseline,
            "promoted": a.name == rollout.promoted_arm,
        }
        for a in arms
    ]


def devices_page_queryset(
    rollout: Rollout, *, state: str = "", arm: str = "", code: str = ""
) -> QuerySet[RolloutDevice]:
    qs = RolloutDevice.objects.filter(rollout=rollout).select_related("device")
    if state == "downloading":
        qs = qs.filter(state=D.IN_PROGRESS, last_phase__in=list(_DOWNLOAD_PHASES))
    elif state == "installing":
        qs = qs.filter(state=D.IN_PROGRESS).exclude(last_phase__in=list(_DOWNLOAD_PHASES))
    elif state:
        qs = qs.filter(state=state)
    if arm:
        qs = qs.filter(arm=arm)
    if code == "unknown":
        qs = qs.filter(last_code="", state__in=FAILURE_STATES)
    elif code:
        qs = qs.filter(last_code=code)
    return qs.order_by("bucket")


# What a row of the devices table shows, read as plain values (no model instances).
DeviceRow = tuple[Any, ...]
DEVICE_ROW_COLUMNS = (
    "device_id",
    "device__device_id",
    "device__hardware",
    "arm",
    "state",
    "last_phase",
    "last_code",
    "attempts",
    "notified_at",
)


class DeviceRows:
    """The devices table as a Paginator reads it: its size from ``DeviceCounts`` (no
    COUNT query), a page as one SELECT of plain values."""

    def __init__(self, rollout: Rollout, counts: DeviceCounts, **filters: str) -> None:
        self._queryset = devices_page_queryset(rollout, **filters).values_list(*DEVICE_ROW_COLUMNS)
        self._count = counts.matching(**filters)

    def count(self) -> int:
        return self._count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[DeviceRow]:
        return iter(self._queryset)

    @overload
    def __getitem__(self, index: int) -> DeviceRow: ...
    @overload
    def __getitem__(self, index: slice) -> list[DeviceRow]: ...
    def __getitem__(self, index: int | slice) -> DeviceRow | list[DeviceRow]:
        if isinstance(index, slice):
            return list(self._queryset[index])
        return self._queryset[index]


# --- the fleet overview (the admin's landing page) ---------------------------------------

STALE_AFTER = timedelta(hours=24)
FAILURE_WINDOW = timedelta(hours=24)
OVERVIEW_ROLLOUTS = 20


@dataclass
class Overview:
    total: int
    online: int
    offline: int
    stale: int
    revoked: int
    by_hardware: list[tuple[str, int]]
    by_version: list[tuple[str, int]]
    failures: list[tuple[str, int]]
    rollouts: list[tuple[Rollout, list[ArmProgress]]]
    failures_since: datetime
    warnings: list["OverviewWarning"] = field(default_factory=list)


def fleet_overview(now: datetime) -> Overview:
    """Devices by liveness, hardware and installed version, the last day's update failures
    by error code, and the rollouts running, paused or scheduled (at most 20)."""
    enabled = Device.objects.enabled()
    counts = enabled.aggregate(
        n_total=Count("pk"),
        n_online=Count("pk", filter=Q(online=True)),
        n_stale=Count(
            "pk",
            filter=Q(online=False)
            & (Q(last_seen_at__isnull=True) | Q(last_seen_at__lt=now - STALE_AFTER)),
        ),
    )
    revoked = Device.objects.filter(revoked_at__isnull=False).count()
    by_hardware = list(
        enabled.values_list("hardware").annotate(n=Count("pk")).order_by("-n", "hardware")
    )
    installed, nothing = installed_counts()
    versions = {f"{name} {version}": n for (name, version), n in installed.items()}
    if nothing:
        versions["nothing reported"] = nothing
    failures = list(
        DeviceEvent.objects.filter(
            received_at__gte=now - FAILURE_WINDOW, phase__in=list(FAILURE_PHASES)
        )
        .values_list("code")
        .annotate(n=Count("pk"))
        .order_by("-n", "code")
    )
    live = list(
        Rollout.objects.select_related("model")
        .filter(status__in=[RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.SCHEDULED])
        .order_by("-pk")[:OVERVIEW_ROLLOUTS]
    )
    progress = arms_progress(live)
    return Overview(
        total=counts["n_total"],
        online=counts["n_online"],
        offline=counts["n_total"] - counts["n_online"] - counts["n_stale"],
        stale=counts["n_stale"],
        revoked=revoked,
        by_hardware=by_hardware,
        by_version=sorted(versions.items(), key=lambda kv: (-kv[1], kv[0])),
        failures=[(code or "unknown", n) for code, n in failures],
        rollouts=[(rollout, progress[rollout.pk]) for rollout in live],
        failures_since=now - FAILURE_WINDOW,
        warnings=overview_warnings(now),
    )


# --- warnings that need a human ----------------------------------------------------------

# A role's newest metadata warns once less than this share of its lifetime is left (the
# timestamp, re-signed by a periodic task, is normally renewed long before).
EXPIRY_WARN_SHARE = 0.25
# A device with no new phase for this long in a live rollout is stuck (the engine times
# devices out by the policy: a stuck one means the engine is not evaluating, or the timeout
# is very long).
STUCK_AFTER = timedelta(hours=1)
STUCK_STATES = (D.NOTIFIED, D.IN_PROGRESS, D.ROLLING_BACK)


@dataclass
class OverviewWarning:
    kind: str  # tuf_expiry, revoked_key, stuck
    text: str
    link: str = ""


def overview_warnings(now: datetime) -> list[OverviewWarning]:
    """TUF metadata close to expiry, revoked release keys of models a live rollout
    targets, devices stuck in an update: four queries, whatever the history."""
    from django.db.models import Max, OuterRef, Subquery
    from django.db.models.functions import Coalesce
    from django.urls import reverse

    from ota.models import ReleaseKey, TufMetadata

    out: list[OverviewWarning] = []
    newest = TufMetadata.objects.filter(role=OuterRef("role")).order_by("-version")
    for role, version, expires, created in (
        TufMetadata.objects.filter(version=Subquery(newest.values("version")[:1]))
        .order_by("role")
        .values_list("role", "version", "expires", "created_at")
    ):
        lifetime = expires - created
        left = expires - now
        if left <= lifetime * EXPIRY_WARN_SHARE:
            when = "expired" if left <= timedelta(0) else f"expires in {_duration(left)}"
            out.append(
                OverviewWarning(
                    "tuf_expiry",
                    f"TUF {role} metadata version {version} {when} ({expires:%Y-%m-%d %H:%M} "
                    "UTC): devices refuse updates once it has expired. Check that the "
                    "refresh task runs (manage.py tuf_refresh) or re-sign it.",
                    reverse("admin:ota_tufmetadata_changelist") + f"?role__exact={role}",
                )
            )
    live = (RolloutStatus.SCHEDULED, RolloutStatus.RUNNING, RolloutStatus.PAUSED)
    targeted = (
        ReleaseKey.objects.filter(revoked_at__isnull=False, model__rollouts__status__in=live)
        .values_list("keyid", "model__name", "revoked_at")
        .annotate(last=Max("model__rollouts__pk"))
        .order_by("model__name", "keyid")
    )
    for keyid, model, revoked_at, rollout in targeted:
        out.append(
            OverviewWarning(
                "revoked_key",
                f"Release key {keyid[:12]}… of {model} was revoked {revoked_at:%Y-%m-%d} but "
                f"rollout r-{rollout} still targets {model}: make sure the versions it "
                "installs were signed again with a trusted key.",
                reverse("admin:ota_rollout_change", args=[rollout]),
            )
        )
    stuck = (
        RolloutDevice.objects.filter(
            rollout__status__in=[
                RolloutStatus.RUNNING,
                RolloutStatus.PAUSED,
                RolloutStatus.ABORTED,
            ],
            state__in=STUCK_STATES,
        )
        .annotate(since=Coalesce("phase_at", "notified_at", "updated_at"))
        .filter(since__lt=now - STUCK_AFTER)
        .values_list("rollout_id", "state")
        .annotate(n=Count("pk"))
        .order_by("rollout_id", "state")
    )
    for rollout_id, state, n in stuck:
        label = "updating" if state == D.IN_PROGRESS else dict(DISPLAY_STATES).get(state, state)
        out.append(
            OverviewWarning(
                "stuck",
                f"{n} device{'s' if n != 1 else ''} of rollout r-{rollout_id} "
                f"{'have' if n != 1 else 'has'} been {label} for more than "
                f"{_duration(STUCK_AFTER)} without news: is the engine evaluating "
                "(Celery beat and worker)?",
                reverse("admin:ota_rollout_change", args=[rollout_id])
                + f"?state={'downloading' if state == D.IN_PROGRESS else state}#devices",
            )
        )
    return out


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    if minutes >= 2 * 24 * 60:
        return f"{minutes // (24 * 60)} days"
    if minutes >= 120:
        return f"{minutes // 60} hours"
    return f"{max(minutes, 0)} minutes"


# --- A/B and quality-gate comparisons -----------------------------------------------------


@dataclass
class ArmFigure:
    arm: str
    devices: int
    median: float | None
    q1: float | None
    q3: float | None
    baseline: bool = False


@dataclass
class ComparisonChart:
    """One comparison the engine made (a telemetry gate's or automatic promotion's), as
    the engine stored it in ``gate_figures``: drawn per arm, and said in words."""

    title: str
    metric: str
    arms: list[ArmFigure]
    sentence: str
    outcome: str  # loses, wins, no_difference, insufficient_data


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def comparison_sentence(
    cmp: dict[str, Any], *, better: str, unit: str, judged: str
) -> tuple[str, str]:
    """("B's p95 latency_ms is 31 % higher than A's (worse), p = 0.002: B loses", outcome).

    ``judged``: ``gate`` (an arm loses when the engine found it worse) or ``promotion``
    (an arm wins when the engine found it better); the verdict is the engine's flag, never
    recomputed here.
    """
    arm, base = str(cmp.get("arm")), str(cmp.get("baseline"))
    if not cmp.get("enough"):
        return (
            f"Not enough devices yet to compare {arm} with {base}: "
            f"{cmp.get('n_arm', 0)} vs {cmp.get('n_baseline', 0)} reporting {unit}.",
            "insufficient_data",
        )
    change = _num(cmp.get("relative_change"))
    higher = change is not None and change > 0
    worse_direction = higher if better == "lower" else not higher
    p = _num(cmp.get("p_worse") if worse_direction else cmp.get("p_better"))
    if change is None:
        size = f"{arm}'s {unit} differs without bound from {base}'s"
    elif change == 0:
        size = f"{arm}'s {unit} has the same median as {base}'s"
    else:
        size = (
            f"{arm}'s {unit} is {abs(change) * 100:.0f} % {'higher' if higher else 'lower'} "
            f"than {base}'s ({'worse' if worse_direction else 'better'})"
        )
    p_text = f", p = {p:.2g}" if p is not None else ""
    if cmp.get("worse"):
        return f"{size}{p_text}: {arm} loses.", "loses"
    if cmp.get("better") and judged == "promotion":
        return f"{size}{p_text}: {arm} wins.", "wins"
    return f"{size}{p_text}: no significant difference.", "no_difference"


def _chart(
    title: str, cmp: dict[str, Any], *, better: str, unit: str, judged: str
) -> ComparisonChart:
    sentence, outcome = comparison_sentence(cmp, better=better, unit=unit, judged=judged)
    base = ArmFigure(
        str(cmp.get("baseline")),
        int(cmp.get("n_baseline") or 0),
        _num(cmp.get("baseline_median")),
        _num(cmp.get("baseline_q1")),
        _num(cmp.get("baseline_q3")),
        baseline=True,
    )
    arm = ArmFigure(
        str(cmp.get("arm")),
        int(cmp.get("n_arm") or 0),
        _num(cmp.get("arm_median")),
        _num(cmp.get("arm_q1")),
        _num(cmp.get("arm_q3")),
    )
    return ComparisonChart(title, unit, [base, arm], sentence, outcome)


def comparison_charts(rollout: Rollout) -> list[ComparisonChart]:
    """The telemetry gates' and automatic promotion's comparisons, from ``gate_figures``
    (no query: the engine stored them when it evaluated)."""
    figures = rollout.gate_figures if isinstance(rollout.gate_figures, dict) else {}
    out: list[ComparisonChart] = []
    gates = figures.get("gates")
    try:
        for gate in gates if isinstance(gates, list) else ():
            if not (isinstance(gate, dict) and str(gate.get("gate", "")).startswith("telemetry:")):
                continue
            raw = gate.get("figures")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            unit = f"{data.get('statistic')} {data.get('metric')}"
            better = str(data.get("better", "lower"))
            for cmp in data.get("comparisons") or ():
                out.append(
                    _chart(
                        f"Quality gate: {unit} ({better} is better)",
                        cmp,
                        better=better,
                        unit=unit,
                        judged="gate",
                    )
                )
        promotion = figures.get("promotion")
        if isinstance(promotion, list) and promotion:
            p = Policy.from_dict(rollout.policy).promotion
            unit = f"{p.statistic} {p.metric}"
            for cmp in promotion:
                out.append(
                    _chart(
                        f"Automatic promotion: {unit} ({p.better} is better)",
                        cmp,
                        better=p.better,
                        unit=unit,
                        judged="promotion",
                    )
                )
    except (*_UNREADABLE, AttributeError):
        return out
    return out
