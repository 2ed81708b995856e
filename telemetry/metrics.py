"""Every Prometheus metric of the control plane, defined in one place.

Names start with `fleet_`; label values come from small fixed sets and never carry a
device id. The bridge serves its metrics (the module-level objects below) on
--metrics-port; the web process serves the fleet gauges that FleetCollector reads from
the database at scrape time (`web_exposition()`, behind /metrics). Bridge labels:

- `channel`: a `device_agent.protocol.topics.Channel` value, or `unknown` when the
  topic did not parse;
- `result`: `accepted`, `duplicate` (a redelivered event already stored), `dropped`
  (refused input) or `error` (the bridge failed on valid-looking input);
- `reason`: an `ErrorCode` value (`malformed`, `payload_too_large`, ...) or one of
  `unknown_device`, `revoked_device`, `topic_mismatch`, `backpressure`,
  `internal_error`.
"""

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils.module_loading import import_string
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase
from telemetry.batch_histogram import OTHER, BatchHistogram

if TYPE_CHECKING:
    from telemetry.fleet_stats import FleetStats

logger = logging.getLogger(__name__)

BRIDGE_MESSAGES = Counter(
    "fleet_bridge_messages_total",
    "Device messages the bridge took off MQTT, by channel and outcome.",
    ["channel", "result"],
)
BRIDGE_DROPPED = Counter(
    "fleet_bridge_dropped_total",
    "Device messages the bridge dropped, by channel and reason.",
    ["channel", "reason"],
)
BRIDGE_HANDLE_SECONDS = Histogram(
    "fleet_bridge_handle_seconds",
    "Time to validate one device message and hand it to its service.",
    ["channel"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
BRIDGE_QUEUE_MESSAGES = Gauge(
    "fleet_bridge_queue_messages",
    "Messages received from the broker and not yet handled (ingest lag).",
)
BRIDGE_ACKS_SKIPPED = Counter(
    "fleet_bridge_acks_skipped_total",
    "QoS 1 acknowledgements not sent because the connection that delivered the message "
    "is gone; the broker redelivers such messages and the stores are idempotent.",
)
BRIDGE_CONNECTED = Gauge(
    "fleet_bridge_connected",
    "1 while the bridge holds an MQTT session with the broker.",
)
BRIDGE_CONNECTS = Counter(
    "fleet_bridge_connects_total",
    "Successful MQTT connections of the bridge (the first one and every reconnect).",
)
BRIDGE_DESIRED_PUBLISHED = Counter(
    "fleet_bridge_desired_published_total",
    "Desired states the broker acknowledged and the outbox marked as published.",
)
BRIDGE_DESIRED_REFUSED = Counter(
    "fleet_bridge_desired_refused_total",
    "Desired-state publishes the broker refused (MQTT 5 PUBACK reason >= 0x80); retried later.",
)
BRIDGE_DESIRED_INFLIGHT = Gauge(
    "fleet_bridge_desired_inflight",
    "Desired-state publishes handed to the MQTT client and not yet acknowledged.",
)
BRIDGE_DESIRED_REQUEUED = Counter(
    "fleet_bridge_desired_requeued_total",
    "Desired states queued again because the broker came back without them (its retained "
    "sentinel was older than the last one the bridge published, or missing).",
)
BRIDGE_OUTBOX_LEADER = Gauge(
    "fleet_bridge_outbox_leader",
    "1 while this bridge publishes desired states (one bridge of several does), else 0.",
)


# --- telemetry ingest (the bridge) --------------------------------------------------------
# `reason` of a dropped sample: `stale_timestamp`, `future_timestamp`, `unknown_model`,
# `backpressure` (the ingest buffer is full) or `database_refused` (the write failed on
# something other than an unreachable database). Whole messages refused before they reach
# ingest (malformed, payload_too_large, topic_mismatch, unknown_device, ...) are counted
# by `fleet_bridge_dropped_total{channel="telemetry"}`.


TELEMETRY_SAMPLES_STORED = Counter(
    "fleet_telemetry_samples_stored_total",
    "Telemetry samples committed to the database.",
)
TELEMETRY_ROWS_STORED = Counter(
    "fleet_telemetry_rows_stored_total",
    "Telemetry rows (one per metric value) committed to the database.",
)
TELEMETRY_SAMPLES_DROPPED = Counter(
    "fleet_telemetry_samples_dropped_total",
    "Telemetry samples of accepted messages that ingest refused, by reason.",
    ["reason"],
)
TELEMETRY_FLUSH_SECONDS = Histogram(
    "fleet_telemetry_flush_seconds",
    "Time to write one batch of telemetry rows (COPY on PostgreSQL), before the commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
TELEMETRY_FLUSH_ROWS = Histogram(
    "fleet_telemetry_flush_rows",
    "Rows per telemetry write batch.",
    buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000, 100000),
)
TELEMETRY_LAG_SECONDS = BatchHistogram(
    "fleet_telemetry_lag_seconds",
    "Time from the bridge receiving a telemetry message to its rows being committed.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
TELEMETRY_LAST_COMMIT = Gauge(
    "fleet_telemetry_last_commit_timestamp_seconds",
    "Unix time of the last committed telemetry batch.",
    multiprocess_mode="max",
)
# Observed from the `latency_ms` and `confidence` metrics of stored samples. `arm` is
# `none` outside a rollout, `main` in a phased one. Label sets beyond LABEL_SETS_MAX per
# histogram are folded into version="other", arm="other": versions and arms come from
# devices.
LABEL_SETS_MAX = 1000
# Fine steps from 0.1 ms: histogram_quantile() only tells apart models whose latencies fall
# in different buckets, and the models we serve answer in fractions of a millisecond on a
# host (the rollup panels read exact quantiles; these must agree with them).
LATENCY_BUCKETS = (
    0.0001,
    0.000125,
    0.00015,
    0.000175,
    0.0002,
    0.000225,
    0.00025,
    0.0003,
    0.0004,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
MODEL_LATENCY_SECONDS = BatchHistogram(
    "fleet_model_latency_seconds",
    "Model inference latency reported by devices (their latency_ms metric), in seconds.",
    ["model", "version", "arm"],
    buckets=LATENCY_BUCKETS,
    max_label_sets=LABEL_SETS_MAX,
)
MODEL_CONFIDENCE = BatchHistogram(
    "fleet_model_confidence_ratio",
    "Model confidence reported by devices (their confidence metric), 0 to 1.",
    ["model", "version", "arm"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
    max_label_sets=LABEL_SETS_MAX,
)
NO_ARM = "none"


# --- the web process: fleet gauges computed at scrape time --------------------------------
# Read from the database by FleetCollector when /metrics is scraped, so every web worker
# and replica reports the same numbers and nothing has to keep gauges up to date.
# Labels: `hardware` (a hardware target), `model`/`version`, `state` (`online`/`offline`),
# `phase`/`code` (docs/protocol.md phases and error codes), `role` (a TUF role), `rollout`
# and `arm` (rollouts still running or recently finished only), `stat`
# (count/mean/p50/p95/p99), `gate` (a gate's name), `status` (a device's update status in
# a rollout). Series per family are capped at FLEET_METRICS_MAX_SERIES (most devices first).


GATE_PASSING = "passing"
GATE_BREACHED = "breached"
GATE_INSUFFICIENT_DATA = "insufficient_data"
GATE_STATES = (GATE_PASSING, GATE_BREACHED, GATE_INSUFFICIENT_DATA)


@dataclass(frozen=True, kw_only=True, slots=True)
class GateFigure:
    """One gate of one rollout arm as the engine last evaluated it: `state` is the
    engine's verdict for that arm (GATE_STATES), `value` None while there is nothing to
    measure yet."""

    value: float | None
    threshold: float
    state: str

    @property
    def passing(self) -> bool:
        return self.state == GATE_PASSING


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutArmProgress:
    """What the rollout engine reports about one arm of one rollout at scrape time.

    A phased rollout has a single arm, `main` (an empty `arm` is exported as `none`). Report
    rollouts that are not finished, plus finished ones for a while (a day, say), so the
    `rollout` label stays a small set.
    """

    rollout: str
    model: str
    strategy: str  # "phased" | "ab"
    state: str  # the Rollout status value: running, paused, aborted, ...
    stage: int  # index of the current stage, 0-based
    stage_percent: float  # share of the selection the current stage covers, 0-100
    arm: str
    devices: Mapping[str, int]  # update status (pending, in_progress, committed, ...) -> devices
    failures: Mapping[str, int]  # ErrorCode value -> devices that failed with it
    gates: Mapping[str, GateFigure]  # gate name (e.g. latency_ms_p95) -> figure
    finished: bool = False  # completed, aborted or rolled back: nothing will change
    created: datetime | None = None  # when the rollout was created


RolloutProgressSource = Callable[[], Iterable[RolloutArmProgress]]
_rollout_sources: list[RolloutProgressSource] = []


def rollout_progress_source_register(source: RolloutProgressSource) -> None:
    """Export rollout progress from `source`: the rollout engine calls this once (from its
    AppConfig.ready()) with a function that reads its rollouts. Until something registers,
    no rollout progress metric is exported; the setting FLEET_METRICS_ROLLOUT_SOURCE
    (a dotted path) registers one too."""
    if source not in _rollout_sources:
        _rollout_sources.append(source)


def _rollout_progress() -> list[RolloutArmProgress] | None:
    """What the registered sources report; None when there is none."""
    sources = list(_rollout_sources)
    dotted = getattr(settings, "FLEET_METRICS_ROLLOUT_SOURCE", "")
    if dotted:
        sources.append(import_string(dotted))
    if not sources:
        return None
    limit = int(getattr(settings, "FLEET_METRICS_MAX_SERIES", 1000))
    return [progress for source in sources for progress in source()][:limit]


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
        from telemetry import fleet_stats  # the database is only touched at scrape time

        up = GaugeMetricFamily(
            "fleet_metrics_db_up", "1 when the fleet gauges could be read from the database."
        )
        started = time.perf_counter()
        try:
            progress = _rollout_progress()
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


def _families_from_stats(stats: "FleetStats", *, rollouts: set[str] | None = None) -> list[Metric]:
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

# Moved by the bridge only: the web process leaves them out of its exposition, where they
# would be zeros (and, for gauges under gunicorn, one series per worker pid).
_BRIDGE_ONLY = frozenset(
    family.name
    for metric in (
        BRIDGE_MESSAGES,
        BRIDGE_DROPPED,
        BRIDGE_HANDLE_SECONDS,
        BRIDGE_QUEUE_MESSAGES,
        BRIDGE_ACKS_SKIPPED,
        BRIDGE_CONNECTED,
        BRIDGE_CONNECTS,
        BRIDGE_DESIRED_PUBLISHED,
        BRIDGE_DESIRED_REFUSED,
        BRIDGE_DESIRED_INFLIGHT,
        BRIDGE_OUTBOX_LEADER,
        BRIDGE_DESIRED_REQUEUED,
        TELEMETRY_SAMPLES_STORED,
        TELEMETRY_ROWS_STORED,
        TELEMETRY_SAMPLES_DROPPED,
        TELEMETRY_FLUSH_SECONDS,
        TELEMETRY_FLUSH_ROWS,
        TELEMETRY_LAG_SECONDS,
        TELEMETRY_LAST_COMMIT,
        MODEL_LATENCY_SECONDS,
        MODEL_CONFIDENCE,
    )
    for family in metric.describe()
)


class _WebOnly(Collector):
    def __init__(self, source: Collector | CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return [family for family in self._source.collect() if family.name not in _BRIDGE_ONLY]

    def describe(self) -> Iterable[Metric]:
        return []


def web_exposition() -> bytes:
    """The web process's metrics in the Prometheus text format: the fleet gauges, plus
    every worker's own metrics under gunicorn (prometheus_client's multiprocess mode, when
    PROMETHEUS_MULTIPROC_DIR is set) or this process's otherwise."""
    source: Collector | CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WebOnly(source))
    registry.register(FLEET_COLLECTOR)
    return generate_latest(registry)
