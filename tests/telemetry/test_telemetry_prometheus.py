"""End to end: a real Prometheus scrapes the running web server (gunicorn, multiprocess
metrics, bearer token) and bridge while simulated devices publish through Mosquitto; every
panel query of every Grafana dashboard then returns data, and the alerting rules load."""

import json
import math
import re
import secrets
import threading
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from service_check import require_service
from telemetry_support import make_device, now_utc, payload, raw_payload, raw_sample_dict, sample
from telemetry_system import (
    PROMETHEUS,
    PROMTOOL,
    ROOT,
    Prometheus,
    device_client,
    event_payload,
    publish,
    publish_raw,
    start_bridge,
    start_prometheus,
    start_web,
    state_payload,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import DeviceStatus, Phase, Presence, format_timestamp
from device_agent.protocol.topics import Channel, topic_for
from fleet.models import Device
from telemetry.models import Sample
from telemetry.rollups import rollups_refresh

pytestmark = pytest.mark.django_db(transaction=True)

DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
LABEL_VALUES_RE = re.compile(r"^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$")
# (device id, hardware, model version, rollout arm or None)
FLEET = [
    ("dev-a1", "esp32s3-int8", "1.3.0", "A"),
    ("dev-a2", "esp32s3-int8", "1.3.0", "A"),
    ("dev-b1", "linux-x86_64-fp32", "1.4.0", "B"),
    ("dev-b2", "linux-x86_64-fp32", "1.4.0", "B"),
    ("dev-c1", "linux-x86_64-fp32", "1.4.0", None),
]


class Devices:
    """The simulated fleet: reports once, then telemetry every 0.2 s until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.clients = {d: device_client(port, d, will=True) for d, *_ in FLEET}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._telemetry_loop, daemon=True)

    def report(self) -> None:
        for device_id, hardware, version, _ in FLEET:
            client = self.clients[device_id]
            publish(
                client, device_id, Channel.STATUS, DeviceStatus(status=Presence.ONLINE).to_json()
            )
            publish(client, device_id, Channel.STATE, state_payload(version, hardware))
            publish(client, device_id, Channel.EVENTS, event_payload(Phase.COMMITTED))
        publish(
            self.clients["dev-b2"],
            "dev-b2",
            Channel.EVENTS,
            event_payload(Phase.FAILED, ErrorCode.HASH_MISMATCH, seq=8),
        )
        publish(
            self.clients["dev-c1"],
            "dev-c1",
            Channel.EVENTS,
            event_payload(Phase.ROLLED_BACK, ErrorCode.HEALTH_CHECK_FAILED, seq=9),
        )

    def _telemetry_loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            now = now_utc()
            for device_id, _, version, arm in FLEET:
                base = 20.0 if arm == "A" else 15.0
                samples = [
                    sample(
                        ts=ts,
                        version=version,
                        rollout_id="r-9" if arm else None,
                        arm=arm,
                        latency_ms=base + (n % 7),
                        confidence=0.8 if arm == "A" else 0.9,
                    )
                    # The minute before too, so the rollup job has a complete bucket.
                    for ts in (now - timedelta(seconds=90), now)
                ]
                # under the lock: once drop_one has a client, nothing publishes on it
                with self.lock:
                    client = self.clients.get(device_id)
                    if client is not None:
                        publish(client, device_id, Channel.TELEMETRY, payload(*samples))
            n += 1
            self.stop.wait(0.2)

    def hostile(self) -> None:
        """One of each kind of bad telemetry, so every drop reason has a series."""
        client = self.clients["dev-a1"]
        topic = topic_for("dev-a1", Channel.TELEMETRY)
        far = format_timestamp(now_utc() + timedelta(days=3 * 365))
        for bad in (
            b"{not json",
            b"x" * (10 * 1024 * 1024),
            b'{"v": 1, "samples": [{"model": "kws", "version": "1.4.0", "rollout_id": null, '
            b'"arm": null, "metrics": {"latency_ms": NaN}, "ts": "2026-01-01T00:00:00Z"}]}',
            raw_payload(raw_sample_dict(ts=far)),
            raw_payload(raw_sample_dict(model="nosuchmodel")),
            raw_payload(raw_sample_dict(), device_id="dev-b1"),
        ):
            publish_raw(client, topic, bad)
        publish_raw(
            client, topic_for("dev-unknown", Channel.TELEMETRY), raw_payload(raw_sample_dict())
        )

    def drop_one(self) -> None:
        """dev-c1's connection dies: the broker publishes its last will (offline)."""
        with self.lock:
            client = self.clients.pop("dev-c1")
        client.loop_stop()
        sock = client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


def _panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
        for inner in panel.get("panels", []):
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def _substitute(expr: str, variables: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", "15s").replace("$__interval", "1s")
    expr = expr.replace("$__range", "1m")
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", variables[name]).replace(f"${name}", variables[name])
    return expr


def _variables(prometheus: Prometheus, dashboard: dict[str, Any]) -> dict[str, str]:
    """Resolve query variables as Grafana does: label_values(), the saved current value if
    it is among the values, else the first."""
    resolved: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        match = LABEL_VALUES_RE.match(_substitute(query, resolved))
        assert match, f"{dashboard['uid']}: variable {variable['name']}: unsupported query {query}"
        values = prometheus.label_values(match.group(1), match.group(2))
        assert values, f"{dashboard['uid']}: variable {variable['name']} has no values ({query})"
        current = (variable.get("current") or {}).get("value")
        resolved[variable["name"]] = current if current in values else values[0]
    return resolved


def _has_data(result: dict[str, Any]) -> bool:
    if result["resultType"] == "scalar":
        return not math.isnan(float(result["result"][1]))
    return any(not math.isnan(float(item["value"][1])) for item in result["result"])


def _failing_panels(prometheus: Prometheus) -> list[str]:
    failures = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        try:
            variables = _variables(prometheus, dashboard)
        except AssertionError as exc:
            failures.append(str(exc))
            continue
        for title, expr in _panel_targets(dashboard):
            query = _substitute(expr, variables)
            if not _has_data(prometheus.query(query)):
                failures.append(f"{path.name}: {title!r}: no data for {query}")
    return failures


def _wait(predicate: Any, timeout: float, what: str, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_dashboard_panel_returns_data_from_a_real_prometheus(
    settings,
    tmp_path: Path,
    mosquitto,  # type: ignore[no-untyped-def]
) -> None:
    require_service(
        PROMETHEUS is not None and PROMTOOL is not None,
        "prometheus and promtool",
        "apt-get install -y prometheus",
    )
    assert len(DASHBOARDS) == 4
    # given: a TUF repository (timestamp expiry), a registered model and enrolled devices
    from ota.models import Model
    from ota.repository import repository_initialize

    settings.FLEET_KEYS_DIR = tmp_path / "keys"
    repository_initialize(generate_missing_keys=True)
    Model.objects.create(name="kws")
    for device_id, hardware, _, _ in FLEET:
        make_device(device_id, hardware=hardware)
    token = secrets.token_urlsafe(24)

    with ExitStack() as stack:
        bridge, bridge_port = start_bridge(mosquitto.port, tmp_path / "bridge")
        stack.callback(bridge.stop)
        web, web_port = start_web(tmp_path / "web", token)
        stack.callback(web.stop)
        devices = Devices(mosquitto.port)
        stack.callback(devices.close)
        # when devices report, fail, misbehave and send telemetry
        devices.report()
        devices.hostile()
        devices.thread.start()
        _wait(
            lambda: Sample.objects.filter(rollout_id="r-9", arm="B").count() > 20,
            30,
            f"telemetry in the database\n{bridge.log_tail()}",
        )
        devices.drop_one()
        _wait(
            lambda: not Device.objects.get(device_id="dev-c1").online,
            20,
            "dev-c1 marked offline",
        )
        rollups_refresh()
        prom, prometheus = start_prometheus(
            tmp_path / "prometheus", web_port=web_port, bridge_port=bridge_port, token=token
        )
        stack.callback(prom.stop)

        def targets_up() -> bool:
            up = prometheus.query('up{job=~"fleet-.*"} == 1')["result"]
            return len(up) == 2

        _wait(targets_up, 30, f"both targets up\n{web.log_tail()}\n{prom.log_tail()}")

        # then every panel of every dashboard has data (retried while scrapes accumulate
        # for the 15 s rates)
        failures = _failing_panels(prometheus)
        deadline = time.monotonic() + 30
        while failures and time.monotonic() < deadline:
            time.sleep(1)
            failures = _failing_panels(prometheus)
        assert not failures, "\n".join(failures) + f"\n--- web\n{web.log_tail()}"

        assert not _has_data(prometheus.query("fleet_no_such_metric"))  # the check can fail
        # and no series carries a device id
        device_ids = {device_id for device_id, *_ in FLEET} | {"dev-unknown"}
        series = prometheus.query('{__name__=~"fleet_.+"}')["result"]
        assert len(series) > 100
        assert not [s["metric"] for s in series if device_ids & set(s["metric"].values())]

        # and the alerting rules are loaded
        rules = [rule["name"] for group in prometheus.rules() for rule in group["rules"]]
        assert {"FleetTelemetryBackpressureDrops", "FleetTufTimestampStale"} <= set(rules)
        assert {"FleetRolloutAborted", "FleetManyDevicesOffline"} <= set(rules)
        # and the hostile telemetry was dropped by reason, the bridge kept going
        bridge_drops = {
            item["metric"]["reason"]
            for item in prometheus.query("fleet_bridge_dropped_total")["result"]
        }
        assert {
            "malformed",
            "payload_too_large",
            "topic_mismatch",
            "unknown_device",
        } <= bridge_drops
        sample_drops = {
            item["metric"]["reason"]
            for item in prometheus.query("fleet_telemetry_samples_dropped_total")["result"]
        }
        assert {"future_timestamp", "unknown_model"} <= sample_drops
        assert bridge.alive()
        assert web.alive()
