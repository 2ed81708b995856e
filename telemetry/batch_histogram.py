"""A Prometheus histogram that takes whole batches of values, on prometheus_client's public
collector API.

The ingest path sees tens of thousands of values a second. `Histogram.observe()` takes a
lock and walks the buckets once per value; this sorts a batch, finds each bound once with a
binary search and adds the counts under one lock per batch. It exposes exactly what a
`prometheus_client.Histogram` with the same name, buckets and observations exposes
(tests/telemetry/test_batch_histogram.py compares the two), `_created` series included.

It is a custom collector (`collect()` yielding `HistogramMetricFamily`), so it holds its
counts in this process only: it serves the bridge (one process), not a gunicorn web
process under PROMETHEUS_MULTIPROC_DIR.
"""

import math
import os
import threading
import time
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

OTHER = "other"


def _created_enabled() -> bool:
    # The switch prometheus_client documents for its own metrics, read the same way.
    value = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False")
    return value.lower() not in ("true", "1", "t")


@dataclass(slots=True)
class _Series:
    counts: list[int]  # per bucket, not cumulative; +Inf last
    total: float = 0.0
    created: float = field(default_factory=time.time)


class BatchHistogram(Collector):
    """A histogram observed a batch at a time (`observe_values()`).

    `max_label_sets` bounds the series: label sets past it fold into
    (first label, "other", "other", ...), so a device cannot grow the exposition without
    bound by reporting new versions.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        max_label_sets: int | None = None,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(bounds):
            raise ValueError("buckets must be a non-empty sorted sequence")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.max_label_sets = max_label_sets
        self._bounds = tuple(bounds[:-1])  # finite ones; +Inf takes the rest
        self._les = tuple(floatToGoString(b) for b in bounds)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            # Like an unlabelled prometheus_client Histogram: exposed (as zeros) from the start.
            self._series[()] = _Series(counts=[0] * len(self._les))
        if registry is not None:
            registry.register(self)

    def observe_values(self, labels: Sequence[str], values: list[float]) -> None:
        """Observe every value of `values` (sorts the list in place) for one label set."""
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(labels)} label values for {self.labelnames}")
        if not values:
            return
        values.sort()
        counts = []
        below = 0
        for bound in self._bounds:
            upto = bisect_right(values, bound)
            counts.append(upto - below)
            below = upto
        counts.append(len(values) - below)
        total = sum(values)
        key = tuple(str(label) for label in labels)
        with self._lock:
            series = self._series.get(key) or self._series_new(key)
            for i, n in enumerate(counts):
                series.counts[i] += n
            series.total += total

    def _series_new(self, key: tuple[str, ...]) -> _Series:
        if self.max_label_sets is not None and len(self._series) >= self.max_label_sets:
            key = (key[0], *([OTHER] * (len(key) - 1)))
            if key in self._series:
                return self._series[key]
        series = self._series[key] = _Series(counts=[0] * len(self._les))
        return series

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = [
                (key, list(s.counts), s.total, s.created) for key, s in self._series.items()
            ]
        created = _created_enabled()
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, counts, total, created_at in snapshot:
            cumulative = 0
            buckets = []
            for le, n in zip(self._les, counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric(list(key), buckets, total)
            if created:
                # Metric.samples is the public data model of a collected family; a
                # prometheus_client Histogram puts each series' `_created` right there too.
                labels = dict(zip(self.labelnames, key, strict=True))
                family.samples.append(Sample(f"{self.name}_created", labels, created_at))
        return [family]

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]
