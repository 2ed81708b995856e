"""A new bridge process exposes its labelled counters at zero: a panel on a counter that
never moved reads 0 rather than "No data", and increase() sees a first burst (a counter
that appears at its first value hides it)."""

import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter: nothing in it has counted anything yet.
SCRIPT = """
import django
django.setup()
from prometheus_client import REGISTRY, generate_latest
from fleet.bridge.config import BridgeConfig
from fleet.bridge.runner import Bridge
Bridge(BridgeConfig.from_settings(url="mqtt://127.0.0.1:1", client_id="zero-test"))
print(generate_latest(REGISTRY).decode())
"""


def _samples(tmp_path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "fleet.settings",
        "FLEET_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_a_new_bridge_exposes_its_counters_at_zero(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    for channel in ("state", "events", "telemetry", "status"):
        for result in ("accepted", "duplicate", "dropped", "error"):
            assert (
                _value(samples, "fleet_bridge_messages_total", channel=channel, result=result) == 0
            )
        for reason in ("malformed", "payload_too_large", "unknown_device", "backpressure"):
            assert (
                _value(samples, "fleet_bridge_dropped_total", channel=channel, reason=reason) == 0
            )
    for reason in ("stale_timestamp", "future_timestamp", "unknown_model", "backpressure"):
        assert _value(samples, "fleet_telemetry_samples_dropped_total", reason=reason) == 0
    # and nothing made up: only label values the bridge uses
    assert (
        _value(samples, "fleet_bridge_dropped_total", channel="desired", reason="malformed") is None
    )
