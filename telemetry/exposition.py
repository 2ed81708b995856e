"""The web process's /metrics: the Prometheus text exposition behind telemetry.views and
`manage.py metrics_serve`."""

import os
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from telemetry.fleet_collector import FLEET_COLLECTOR
from telemetry.metrics import BRIDGE_ONLY


class _WebOnly(Collector):
    def __init__(self, source: Collector | CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return [family for family in self._source.collect() if family.name not in BRIDGE_ONLY]

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
