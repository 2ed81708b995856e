"""Every Prometheus metric the control plane's processes count, defined in one place, and
the types and sources of rollout progress that the fleet gauges export.

Names start with `fleet_`; label values come from small fixed sets and never carry a
device id. The bridge serves its metrics (the module-level objects below) on
--metrics-port; the web process serves the fleet gauges that
`telemetry.fleet_collector.FleetCollector` reads from the database at scrape time
(`telemetry.exposition.web_exposition()`, behind /metrics). Bridge labels:

- `channel`: a `device_agent.protocol.topics.Channel` value, or `unknown` when the
  topic did not parse;
- `result`: `accepted`, `duplicate` (a redelivered event already stored), `dropped`
  (refused input) or `error` (the bridge failed on valid-looking input);
- `reason`: an `ErrorCode` value (`malformed`, `payload_too_large`, ...) or one of
  `unknown_device`, `revoked_device`, `topic_mismatch`, `backpressure`,
  `internal_error`.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils.module_loading import import_string
from prometheus_client import Counter, Gauge, Histogram

from telemetry.batch_histogram import BatchHistogram

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
# Observed from the `latency_ms` and `confidence` metrics of stored samples, by the
# rollout and arm the sample names: only a running or paused rollout of the sample's model
# and one of its arms (`main` in a phased rollout); any other sample, and one outside a
# rollout, has rollout="none", arm="none". So two rollouts of one model at once keep apart,
# and `rollout` stays a small set. Label sets beyond LABEL_SETS_MAX per histogram are
# folded into version="other", rollout="other", arm="other": versions come from devices.
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
    ["model", "version", "rollout", "arm"],
    buckets=LATENCY_BUCKETS,
    max_label_sets=LABEL_SETS_MAX,
)
MODEL_CONFIDENCE = BatchHistogram(
    "fleet_model_confidence_ratio",
    "Model confidence reported by devices (their confidence metric), 0 to 1.",
    ["model", "version", "rollout", "arm"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
    max_label_sets=LABEL_SETS_MAX,
)
NO_ARM = "none"
NO_ROLLOUT = "none"


# --- rollout progress, exported by the web process's fleet gauges --------------------
# The rollout engine reports it through a registered source (below); the metric families
# are built in telemetry.fleet_collector.


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


def rollout_progress() -> list[RolloutArmProgress] | None:
    """What the registered sources report; None when there is none."""
    sources = list(_rollout_sources)
    dotted = getattr(settings, "FLEET_METRICS_ROLLOUT_SOURCE", "")
    if dotted:
        sources.append(import_string(dotted))
    if not sources:
        return None
    limit = int(getattr(settings, "FLEET_METRICS_MAX_SERIES", 1000))
    return [progress for source in sources for progress in source()][:limit]


# Moved by the bridge only: the web process leaves them out of its exposition, where they
# would be zeros (and, for gauges under gunicorn, one series per worker pid).
BRIDGE_ONLY = frozenset(
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
