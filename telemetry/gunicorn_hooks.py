"""gunicorn hooks for Prometheus metrics across worker processes.

Under gunicorn each worker is a process, so /metrics must add up what every worker
counted: prometheus_client's multiprocess mode, switched on by the environment variable
PROMETHEUS_MULTIPROC_DIR (an empty directory only this gunicorn uses, set before it
starts). Use these hooks as the configuration file, or import them into yours::

    PROMETHEUS_MULTIPROC_DIR=/run/fleet/prometheus gunicorn -c python:telemetry.gunicorn_hooks \\
        --bind 127.0.0.1:8000 fleet.wsgi

Only the web process uses the directory: the bridge serves its own metrics on
--metrics-port and must not have PROMETHEUS_MULTIPROC_DIR set.
"""

import os
from pathlib import Path
from typing import Any


def on_starting(server: Any) -> None:
    """Remove the files of a previous run: their counters would be added to this one's."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (its counters and histograms stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
