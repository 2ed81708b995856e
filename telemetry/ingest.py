"""The bridge's telemetry sink: check samples, buffer their rows, write them in bulk.

The bridge has already refused what is not a telemetry batch of its enrolled, unrevoked
device (malformed JSON, oversize, NaN/Infinity, another device's id, ...). Here each
sample is checked against what only the server knows: its timestamp must lie within
[received - max_age, received + max_future] and its model must be registered. Refused
samples are counted by reason, never stored.

The bridge's worker calls `add()` for each message of a batch and `take()` at its end (or
`discard()` when its transaction rolls back, and the batch is checked again); its writer
thread then calls `write()` with what was taken, inside the transaction whose commit
precedes the QoS 1 acknowledgements, while the worker checks the next batch. So a batch is
as large as what queued up while the previous one was checked (up to
FLEET_BRIDGE_BATCH_SIZE messages): one message at a time when the load is light, large
batches when it is heavy, and acknowledged telemetry is always committed. Memory is
bounded twice: the worker's queue drops QoS 0 messages beyond FLEET_BRIDGE_QUEUE_SIZE
(`backpressure`), and this buffer refuses samples beyond `max_buffer_rows` rows, counted
as `backpressure` too.

On PostgreSQL the rows go in with a binary COPY (psycopg 3); elsewhere (the embedded
SQLite default) with one executemany INSERT. Counters and histograms move only after the
commit.

Storing is idempotent per message: the bridge passes the sha256 of each payload, and
`write()` first records (device, digest) in `telemetry_receivedbatch` (one INSERT ...
ON CONFLICT DO NOTHING RETURNING per write) and copies only the rows of the messages it
had not stored before, in the same transaction. A redelivered or replayed message is
counted as `duplicate`. COPY itself cannot skip a conflict, so the samples table keeps no
unique key.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction

from device_agent.protocol.messages import TelemetryBatch
from fleet import hooks
from fleet.bulk import rows_copy
from fleet.identifiers import PHASED_ARM
from fleet.models import Device
from telemetry import metrics
from telemetry.models import ReceivedBatch, Sample

logger = logging.getLogger(__name__)

REASON_STALE = "stale_timestamp"
REASON_FUTURE = "future_timestamp"
REASON_UNKNOWN_MODEL = "unknown_model"
REASON_BACKPRESSURE = "backpressure"
REASON_DATABASE_REFUSED = "database_refused"
REASON_DUPLICATE = "duplicate"
_REASONS = (
    REASON_STALE,
    REASON_FUTURE,
    REASON_UNKNOWN_MODEL,
    REASON_BACKPRESSURE,
    REASON_DATABASE_REFUSED,
    REASON_DUPLICATE,
)


def ingest_metrics_initialise() -> None:
    """Every drop reason at zero (see fleet.bridge.handlers.bridge_metrics_initialise)."""
    for reason in _REASONS:
        metrics.TELEMETRY_SAMPLES_DROPPED.labels(reason)


BATCH_KEYS_CHUNK = 500  # (device, digest, received_at) per INSERT

LATENCY_METRIC = "latency_ms"
CONFIDENCE_METRIC = "confidence"

# device pk, ts, model, version, rollout_id, arm, metric, value
Row = tuple[int, datetime, str, str, str, str, str, float]
COLUMNS = ("device_id", "ts", "model", "version", "rollout_id", "arm", "metric", "value")
COPY_TYPES = ("int8", "timestamptz", "text", "text", "text", "text", "text", "float8")


def copy_sql() -> str:
    """The COPY statement the PostgreSQL write uses (the benchmark's reference uses it too)."""
    return f"COPY telemetry_sample ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def rows_write(rows: list[Row]) -> None:
    """Insert rows in the current transaction: binary COPY on PostgreSQL, else executemany
    (``fleet.bulk.rows_copy``)."""
    rows_copy(Sample, COLUMNS, COPY_TYPES, rows)


class KnownModels:
    """The names of registered models, re-read at most every `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._read_at = -float("inf")
        self._names: frozenset[str] = frozenset()

    def names(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._read_at >= self._ttl:
            self._names = hooks.model_names()
            self._read_at = now
        return self._names


class LiveRollouts:
    """The running and paused rollouts (``fleet.hooks.live_rollouts``), re-read at most
    every `ttl` seconds: the model histograms' `rollout` label takes only these."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._read_at = -float("inf")
        self._live: dict[str, hooks.LiveRollout] = {}

    def live(self) -> dict[str, hooks.LiveRollout]:
        now = time.monotonic()
        if now - self._read_at >= self._ttl:
            self._live = hooks.live_rollouts()
            self._read_at = now
        return self._live


ModelKey = tuple[str, str, str, str]  # model, version, rollout_id, arm as stored


def model_labels(
    values: dict[ModelKey, tuple[list[float], list[float]]], live: dict[str, hooks.LiveRollout]
) -> dict[ModelKey, tuple[list[float], list[float]]]:
    """`values` keyed by the model histograms' labels (model, version, rollout, arm): a
    sample of an arm of a live rollout of its model keeps both, any other sample gets
    `none` for both, so a finished rollout or a device's made-up one adds no series."""
    labelled: dict[ModelKey, tuple[list[float], list[float]]] = {}
    for (model, version, rollout_id, arm), (latencies, confidences) in values.items():
        entry = live.get(rollout_id) if rollout_id else None
        if entry is not None and entry.model == model and arm in entry.arms:
            labels = (model, version, rollout_id, arm)
        else:
            labels = (model, version, metrics.NO_ROLLOUT, metrics.NO_ARM)
        lists = labelled.get(labels)
        if lists is None:
            labelled[labels] = (latencies, confidences)
        else:
            lists[0].extend(latencies)
            lists[1].extend(confidences)
    return labelled


@dataclass
class _Pending:
    """What the current batch will have stored once it commits."""

    rows: list[Row] = field(default_factory=list)
    samples: int = 0
    received: list[float] = field(default_factory=list)  # unix times, one per message
    dropped: dict[str, int] = field(default_factory=dict)
    # Per keyed message: (device pk, payload digest, received_at, first row, end row,
    # samples); and the keys already buffered (a repeat within the batch).
    batches: list[tuple[int, str, datetime, int, int, int]] = field(default_factory=list)
    keys: set[tuple[int, str]] = field(default_factory=set)
    # (model, version, rollout_id, arm) -> (latency seconds, confidences); None when not
    # observed. Keyed as stored; take() turns the keys into the histograms' labels.
    model_values: dict[ModelKey, tuple[list[float], list[float]]] | None = None

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n


class TelemetryIngest:
    """The bridge's TelemetrySink (fleet.bridge.handlers): validates and stores samples."""

    def __init__(
        self,
        *,
        max_age: timedelta,
        max_future: timedelta,
        require_known_model: bool = True,
        model_cache_seconds: float = 10.0,
        max_buffer_rows: int = 1_000_000,
        observe_models: bool = True,
        write: Callable[[list[Row]], None] = rows_write,
    ) -> None:
        self._max_age = max_age
        self._max_future = max_future
        self._models = KnownModels(model_cache_seconds) if require_known_model else None
        self._rollouts = LiveRollouts(model_cache_seconds)
        self._max_buffer_rows = max_buffer_rows
        self._observe_models = observe_models
        self._write = write
        self._pending = self._new_pending()

    @classmethod
    def from_settings(cls) -> "TelemetryIngest":
        """The sink the bridge runs with, configured by the FLEET_TELEMETRY_* settings."""
        return cls(
            max_age=settings.FLEET_TELEMETRY_MAX_AGE,
            max_future=settings.FLEET_TELEMETRY_MAX_FUTURE,
            require_known_model=settings.FLEET_TELEMETRY_REQUIRE_KNOWN_MODEL,
            model_cache_seconds=settings.FLEET_TELEMETRY_MODEL_CACHE_SECONDS,
            max_buffer_rows=settings.FLEET_TELEMETRY_MAX_BUFFER_ROWS,
            observe_models=settings.FLEET_TELEMETRY_MODEL_METRICS,
        )

    def _new_pending(self) -> _Pending:
        pending = _Pending()
        if self._observe_models:
            pending.model_values = {}
        return pending

    @property
    def buffered_rows(self) -> int:
        return len(self._pending.rows)

    # --- TelemetrySink ----------------------------------------------------------------

    def add(
        self,
        *,
        device: Device,
        batch: TelemetryBatch,
        received_at: datetime,
        key: str | None = None,
    ) -> None:
        """Check the batch's samples and buffer the rows of those that pass.

        `key` (the sha256 of the payload) stores a message's samples once however often
        it comes; without it they are stored each time.
        """
        pending = self._pending
        if key is not None:
            if (device.pk, key) in pending.keys:
                pending.drop(REASON_DUPLICATE, len(batch.samples))
                return
            pending.keys.add((device.pk, key))
        if len(pending.rows) + sum(len(s.metrics) for s in batch.samples) > self._max_buffer_rows:
            # Only reachable if flush() is not called: the worker flushes every batch.
            pending.drop(REASON_BACKPRESSURE, len(batch.samples))
            return
        oldest, newest = received_at - self._max_age, received_at + self._max_future
        known = self._models.names() if self._models is not None else None
        model_values = pending.model_values
        pk = device.pk
        rows: list[Row] = []
        append = rows.append
        stale = future = unknown = stored = 0
        for sample in batch.samples:
            ts = sample.ts
            if ts < oldest:
                stale += 1
                continue
            if ts > newest:
                future += 1
                continue
            model = sample.model
            if known is not None and model not in known:
                unknown += 1
                continue
            version, rollout_id = sample.version, sample.rollout_id or ""
            # A phased rollout's entries name no arm; its samples belong to its one arm.
            arm = sample.arm or (PHASED_ARM if rollout_id else "")
            for name, value in sample.metrics.items():
                append((pk, ts, model, version, rollout_id, arm, name, value))
            stored += 1
            if model_values is not None:
                values = sample.metrics
                labels = (model, version, rollout_id, arm)
                lists = model_values.get(labels)
                if lists is None:
                    lists = model_values[labels] = ([], [])
                latency = values.get(LATENCY_METRIC)
                if latency is not None:
                    lists[0].append(latency / 1000.0)
                confidence = values.get(CONFIDENCE_METRIC)
                if confidence is not None:
                    lists[1].append(confidence)
        pending.drop(REASON_STALE, stale)
        pending.drop(REASON_FUTURE, future)
        pending.drop(REASON_UNKNOWN_MODEL, unknown)
        if key is not None:
            start = len(pending.rows)
            pending.batches.append((pk, key, received_at, start, start + len(rows), stored))
        pending.rows.extend(rows)
        pending.samples += stored
        pending.received.append(received_at.timestamp())

    def take(self) -> _Pending:
        """Detach what `add()` buffered since the last take, for `write()`; a new buffer
        starts. (The bridge's worker takes; its writer thread writes.)"""
        pending, self._pending = self._pending, self._new_pending()
        if pending.model_values:
            pending.model_values = model_labels(pending.model_values, self._rollouts.live())
        return pending

    def write(self, taken: _Pending) -> None:
        """Write a taken batch in the caller's transaction; metrics move on commit.

        A database that is unreachable or locked raises, and `taken` is left as it was for
        a retry; anything else the database refuses drops the batch's samples, counted,
        rather than stopping the bridge.
        """
        started = time.perf_counter()
        try:
            with transaction.atomic():
                rows, repeated = _first_time(taken)
                self._write(rows)
        except (OperationalError, InterfaceError):
            raise
        except DatabaseError:
            logger.exception("the database refused %d telemetry rows", len(taken.rows))
            taken.drop(REASON_DATABASE_REFUSED, taken.samples)
            taken.rows, taken.samples, taken.model_values = [], 0, None
        else:
            if repeated:
                # Counted once it committed: a retry starts from `taken` as it was.
                taken.rows, taken.samples = rows, taken.samples - repeated
                taken.drop(REASON_DUPLICATE, repeated)
        seconds = time.perf_counter() - started
        transaction.on_commit(lambda: _committed(taken, seconds))

    def flush(self) -> None:
        """Write the buffered rows in the caller's transaction (`write(take())`).

        A database that is unreachable or locked raises, and the rows stay buffered (the
        caller calls `discard()` and adds the batch again).
        """
        pending = self.take()
        try:
            self.write(pending)
        except (OperationalError, InterfaceError):
            self._pending = pending
            raise

    def discard(self) -> None:
        """Forget the buffered batch: its transaction rolled back and it will come again."""
        self._pending = self._new_pending()


def _first_time(taken: _Pending) -> tuple[list[Row], int]:
    """Record the keyed messages of `taken`; the rows to write (those of messages not
    stored before, and unkeyed ones) and how many samples were repeats."""
    if not taken.batches:
        return taken.rows, 0
    new: set[tuple[int, str]] = set()
    table = connection.ops.quote_name(ReceivedBatch._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    for start in range(0, len(taken.batches), BATCH_KEYS_CHUNK):
        chunk = taken.batches[start : start + BATCH_KEYS_CHUNK]
        params: list[Any] = []
        for pk, digest, received_at, *_ in chunk:
            params += [pk, digest, adapt(received_at)]
        values = ", ".join(["(%s, %s, %s)"] * len(chunk))
        with connection.cursor() as cursor:
            # Only the model's own quoted table name is formatted into the SQL.
            cursor.execute(
                f"INSERT INTO {table} (device_id, digest, received_at) VALUES {values} "  # noqa: S608
                "ON CONFLICT DO NOTHING RETURNING device_id, digest",
                params,
            )
            new.update((int(pk), str(digest)) for pk, digest in cursor.fetchall())
    if len(new) == len(taken.batches):
        return taken.rows, 0
    keep = bytearray(b"\x01") * len(taken.rows)
    repeated = 0
    for pk, digest, _, first, end, samples in taken.batches:
        if (pk, digest) not in new:
            keep[first:end] = bytes(end - first)
            repeated += samples
    return [row for row, kept in zip(taken.rows, keep, strict=True) if kept], repeated


def _committed(pending: _Pending, seconds: float) -> None:
    now = time.time()
    for reason, n in pending.dropped.items():
        metrics.TELEMETRY_SAMPLES_DROPPED.labels(reason).inc(n)
    if pending.rows:
        metrics.TELEMETRY_FLUSH_SECONDS.observe(seconds)
        metrics.TELEMETRY_FLUSH_ROWS.observe(len(pending.rows))
        metrics.TELEMETRY_ROWS_STORED.inc(len(pending.rows))
        metrics.TELEMETRY_SAMPLES_STORED.inc(pending.samples)
        metrics.TELEMETRY_LAST_COMMIT.set(now)
    if pending.received:
        lags = [now - received for received in pending.received]
        metrics.TELEMETRY_LAG_SECONDS.observe_values((), lags)
    if pending.model_values is not None:
        for labels, (latencies, confidences) in pending.model_values.items():
            metrics.MODEL_LATENCY_SECONDS.observe_values(labels, latencies)
            metrics.MODEL_CONFIDENCE.observe_values(labels, confidences)


def telemetry_sink_from_settings() -> TelemetryIngest:
    """The bridge's telemetry sink (registered in telemetry/apps.py), its drop counters
    at zero."""
    ingest_metrics_initialise()
    return TelemetryIngest.from_settings()
