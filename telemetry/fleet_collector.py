"""The web process's fleet gauges, read from the database at scrape time.

Read by FleetCollector when /metrics is scraped (telemetry.exposition), so every web worker
and replica reports the same numbers and nothing has to keep gauges up to date.
Labels: `hardware` (a hardware target), `model`/`version`, `state` (`online`/`offline`),
`phase`/`code` (docs/protocol.md phases and error codes), `role` (a TUF role), `rollout`
and `arm` (rollouts still running or recently finished only), `stat`
(count/mean/p50/p95/p99), `gate` (a gate's name), `status` (a device's update status in
a rollout). Series per family are capped at FLEET_METRICS_MAX_SERIES (most devices first).
"""

import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase
from telemetry import fleet_stats
from telemetry.batch_histogram import OTHER
from telemetry.metrics import GATE_STATES, NO_ARM, RolloutArmProgress, rollout_progress

logger = logging.getLogger(__name__)


def _families_from_rollouts(progress: list[RolloutArmProgress]) -> list[Metric]:
    info = GaugeMetricFamily(
        "fleet_rollout_info",
        "1 for each rollout the engine reports, with its model, strategy and state.",
        labels=["rollout", "model", "strategy", "state"],
    )
    by_state = GaugeMetricFamily(
        "fleet_rollouts", "Rollouts the engine reports, by state.", labels=["state"]
    )
    stage = GaugeMetricFamily(
        "fleet_rollout_stage", "Index of the current stage (0-based).", labels=["rollout"]
    )
    stage_percent = GaugeMetricFamily(
        "fleet_rollout_stage_percent",
        "Share of the selection the current stage covers, 0-100.",
        labels=["rollout"],
    )
    devices = GaugeMetricFamily(
        "fleet_rollout_devices",
        "Devices of a rollout arm by update status.",
        labels=["rollout", "arm", "status"],
    )
    failures = CounterMetricFamily(
        "fleet_rollout_failures",
        "Devices of a rollout arm whose update failed, by error code.",
        labels=["rollout", "arm", "code"],
    )
    gate_value = GaugeMetricFamily(
        "fleet_rollout_gate_value",
        "The figure a gate last measured.",
        labels=["rollout", "arm", "gate"],
    )
    gate_threshold = GaugeMetricFamily(
        "fleet_rollout_gate_threshold", "A gate's threshold.", labels=["rollout", "arm", "gate"]
    )
    gate_passing = GaugeMetricFamily(
        "fleet_rollout_gate_passing",
        "1 while a gate passes, else 0 (breached, or not enough data to judge).",
        labels=["rollout", "arm", "gate"],
    )
    gate_state = GaugeMetricFamily(
        "fleet_rollout_gate_state",
        "The engine's verdict on a gate for an arm: 1 for its state (passing, breached, "
        "insufficient_data), 0 for the other two.",
        labels=["rollout", "arm", "gate", "state"],
    )
    created = GaugeMetricFamily(
        "fleet_rollout_created_timestamp_seconds",
        "Unix time at which a rollout was created (orders rollouts newest first).",
        labels=["rollout"],
    )
    states: dict[str, set[str]] = {}
    seen: set[str] = set()
    for p in progress:
        arm = p.arm or NO_ARM
        states.setdefault(p.state, set()).add(p.rollout)
        if p.rollout not in seen:
            seen.add(p.rollout)
            info.add_metric([p.rollout, p.model, p.strategy, p.state], 1)
            stage.add_metric([p.rollout], p.stage)
            stage_percent.add_metric([p.rollout], p.stage_percent)
            if p.created is not None:
                created.add_metric([p.rollout], _timestamp(p.created))
        for status, n in p.devices.items():
            devices.add_metric([p.rollout, arm, status], n)
        for code, n in p.failures.items():
            failures.add_metric([p.rollout, arm, _code_label(code)], n)
        for gate, figure in p.gates.items():
            if figure.value is not None:
                gate_value.add_metric([p.rollout, arm, gate], figure.value)
            gate_threshold.add_metric([p.rollout, arm, gate], figure.threshold)
            gate_passing.add_metric([p.rollout, arm, gate], 1 if figure.passing else 0)
            for state in GATE_STATES:
                gate_state.add_metric([p.rollout, arm, gate, state], int(figure.state == state))
    for state, rollouts in sorted(states.items()):
        by_state.add_metric([state], len(rollouts))
    return [
        info,
        by_state,
        stage,
        stage_percent,
        devices,
        failures,
        gate_value,
        gate_threshold,
        gate_passing,
        gate_state,
        created,
    ]


_ERROR_CODES = frozenset(code.value for code in ErrorCode)
# The final phases of an update (telemetry.fleet_stats.FINAL_PHASES) with the codes each
# can carry: a commit carries none, the others any error code.
_OUTCOME_ZEROS = [(Phase.COMMITTED.value, "none")] + [
    (phase.value, code.value)
    for phase in (Phase.FAILED, Phase.ROLLED_BACK, Phase.REJECTED)
    for code in ErrorCode
]


def _code_label(code: str) -> str:
    if not code:
        return "none"
    return code if code in _ERROR_CODES else OTHER


class FleetCollector(Collector):
    """Fleet gauges read from the database at scrape time (cached for a few seconds, so
    several scrapers cost one set of queries)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached_at = -float("inf")
        self._cached: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        ttl = float(getattr(settings, "FLEET_METRICS_DB_CACHE_SECONDS", 5))
        with self._lock:
            if time.monotonic() - self._cached_at >= ttl:
                self._cached = self._read()
                self._cached_at = time.monotonic()
            return list(self._cached)

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "fleet_metrics_db_up", "1 when the fleet gauges could be read from the database."
        )
        started = time.perf_counter()
        try:
            progress = rollout_progress()
            # Arm figures only of rollouts the engine reports unfinished (all of them
            # without an engine): a finished rollout's newest rollup is history, and
            # devices may go on tagging samples with an old rollout's id.
            current = None if progress is None else {p.rollout for p in progress if not p.finished}
            families = _families_from_stats(fleet_stats.fleet_stats_read(), rollouts=current)
            families += _families_from_rollouts(progress or [])
        except Exception:
            logger.warning("could not read the fleet gauges", exc_info=True)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        seconds = GaugeMetricFamily(
            "fleet_metrics_db_read_seconds", "Time the last read of the fleet gauges took."
        )
        seconds.add_metric([], time.perf_counter() - started)
        return [up, seconds, *families]

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the database


def _timestamp(value: datetime) -> float:
    return value.timestamp()


def _families_from_stats(
    stats: fleet_stats.FleetStats, *, rollouts: set[str] | None = None
) -> list[Metric]:
    """`rollouts`: those whose arm figures are exported (None: every one)."""
    limit = int(getattr(settings, "FLEET_METRICS_MAX_SERIES", 1000))
    devices = GaugeMetricFamily(
        "fleet_devices",
        "Enrolled, not revoked devices by hardware target and presence.",
        labels=["hardware", "state"],
    )
    # Both presences of every hardware, so "offline" reads 0 rather than nothing.
    by_presence = {(hardware, _presence(online)): n for hardware, online, n in stats.devices}
    hardwares = list(dict.fromkeys(hardware for hardware, _, _ in stats.devices))
    for hardware in hardwares[:limit]:
        for presence in ("online", "offline"):
            devices.add_metric([hardware, presence], by_presence.get((hardware, presence), 0))
    device_models = GaugeMetricFamily(
        "fleet_device_models",
        "Devices by the model versions they report running, hardware target and presence.",
        labels=["hardware", "model", "version", "state"],
    )
    for hardware, model, version, online, n in stats.device_models[:limit]:
        device_models.add_metric([hardware, model, version, _presence(online)], n)
    outcomes = CounterMetricFamily(
        "fleet_update_outcomes",
        "Updates that ended, by final phase (committed, failed, rolled_back, rejected) and "
        "error code (none when committed).",
        labels=["phase", "code"],
    )
    # Every known phase and code from zero: a counter that appears at its first value
    # hides that first burst from increase().
    merged: dict[tuple[str, str], int] = dict.fromkeys(_OUTCOME_ZEROS, 0)
    for phase, code, n in stats.outcomes:
        key = (phase, _code_label(code))
        merged[key] = merged.get(key, 0) + n
    for (phase, code), n in sorted(merged.items()):
        outcomes.add_metric([phase, code], n)
    tuf = GaugeMetricFamily(
        "fleet_tuf_metadata_expires_timestamp_seconds",
        "Unix time at which the newest version of a TUF role's metadata expires.",
        labels=["role"],
    )
    for role, expires in stats.tuf_expires[:limit]:
        tuf.add_metric([role], _timestamp(expires))
    families: list[Metric] = [devices, device_models, outcomes, tuf]
    if stats.rollup_latest is not None:
        latest = GaugeMetricFamily(
            "fleet_telemetry_rollup_latest_timestamp_seconds",
            "Unix time of the newest one-minute telemetry rollup bucket.",
        )
        latest.add_metric([], _timestamp(stats.rollup_latest))
        families.append(latest)
    arm_stat = GaugeMetricFamily(
        "fleet_telemetry_arm_stat",
        "A telemetry metric of a rollout arm over its newest complete one-minute rollup "
        "bucket (stat: count, mean, p50, p95, p99); what the gates read.",
        labels=["rollout", "arm", "model", "version", "metric", "stat"],
    )
    shown = [row for row in stats.arm_stats if rollouts is None or row.rollout_id in rollouts]
    for row in shown[:limit]:
        labels = [row.rollout_id, row.arm or NO_ARM, row.model, row.version, row.metric]
        for stat in ("count", "mean", "p50", "p95", "p99"):
            arm_stat.add_metric([*labels, stat], float(getattr(row, stat)))
    families.append(arm_stat)
    return families


def _presence(online: bool) -> str:
    return "online" if online else "offline"


FLEET_COLLECTOR = FleetCollector()
