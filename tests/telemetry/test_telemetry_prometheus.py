"""End to end: a real Prometheus scrapes the running web server (gunicorn, multiprocess
metrics, bearer token) and bridge while simulated devices publish through Mosquitto; every
panel query of every Grafana dashboard then returns data, the values are right for known
scenarios (devices online, a failed rollout, an aborted A/B rollout; see
telemetry_rollout_stub), and the alerting rules load."""

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
from telemetry_support import (
    live_rollout,
    make_device,
    now_utc,
    payload,
    raw_payload,
    raw_sample_dict,
    sample,
)
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
QUERY_RESULT_RE = re.compile(r"^query_result\((.+)\)$", re.DOTALL)
# Inference latency of the two arms of r-9, in ms: close, and both under a millisecond.
LATENCY_MS = {"A": 0.23, "B": 0.19}
# r-11, another rollout of the same model at the same time, with arms of the same names:
# its arm A is far slower, and would drag r-9's arm A with it if the histograms mixed them.
OTHER_ROLLOUT_LATENCY_MS = 0.9
# (device id, hardware, model version, rollout id or None, rollout arm or None)
FLEET = [
    ("dev-a1", "esp32s3-int8", "1.3.0", "r-9", "A"),
    ("dev-a2", "esp32s3-int8", "1.3.0", "r-9", "A"),
    ("dev-b1", "linux-x86_64-fp32", "1.4.0", "r-9", "B"),
    ("dev-b2", "linux-x86_64-fp32", "1.4.0", "r-9", "B"),
    ("dev-c1", "linux-x86_64-fp32", "1.4.0", None, None),
    ("dev-d1", "esp32s3-int8", "1.3.0", "r-11", "A"),
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
        for device_id, hardware, version, _, _ in FLEET:
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
            for device_id, _, version, rollout_id, arm in FLEET:
                latency_ms = LATENCY_MS.get(arm or "B", 0.19)
                if rollout_id == "r-11":
                    latency_ms = OTHER_ROLLOUT_LATENCY_MS
                samples = [
                    sample(
                        ts=ts,
                        version=version,
                        rollout_id=rollout_id,
                        arm=arm,
                        latency_ms=latency_ms,
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


def _grafana_sort(values: list[str], sort: int) -> list[str]:
    """Grafana's variable sort: 0 none, 1/2 alphabetical, 3/4 by the first number."""

    def number(text: str) -> int:
        match = re.search(r"\d+", text)
        return int(match.group()) if match else -1

    if sort in (1, 2):
        return sorted(values, reverse=sort == 2)
    if sort in (3, 4):
        return sorted(values, key=number, reverse=sort == 4)
    return values


def _options(
    prometheus: Prometheus, dashboard: dict[str, Any], variable: dict[str, Any], resolved: dict
) -> list[str]:
    """A query variable's options as Grafana lists them: label_values() or query_result()
    (each series as `{labels} value time`), through the variable's regex and sort."""
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    query = _substitute(query, resolved)
    if match := LABEL_VALUES_RE.match(query):
        values = prometheus.label_values(match.group(1), match.group(2))
    else:
        match = QUERY_RESULT_RE.match(query)
        assert match, f"{dashboard['uid']}: variable {variable['name']}: unsupported {query}"
        values = [
            "{"
            + ",".join(f'{k}="{v}"' for k, v in item["metric"].items())
            + f"}} {item['value'][1]} {item['value'][0]}"
            for item in prometheus.query(match.group(1))["result"]
        ]
    if variable.get("regex"):
        pattern = re.compile(variable["regex"].strip("/"))
        found = [pattern.search(text) for text in values]
        values = [m.group(1) if m.groups() else m.group() for m in found if m]
    return _grafana_sort(list(dict.fromkeys(values)), variable.get("sort", 0))


def _variables(prometheus: Prometheus, dashboard: dict[str, Any], **chosen: str) -> dict[str, str]:
    """Resolve query variables as Grafana does: the saved current value if it is among the
    options, else the first; `chosen` picks values as a user would."""
    resolved: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        name = variable["name"]
        values = _options(prometheus, dashboard, variable, resolved)
        if name in chosen:
            resolved[name] = chosen[name]
            continue
        assert values, f"{dashboard['uid']}: variable {name} has no values"
        current = (variable.get("current") or {}).get("value")
        resolved[name] = current if current in values else values[0]
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


def _dashboard(name: str) -> dict[str, Any]:
    return dict(json.loads((ROOT / "deploy/grafana/dashboards" / name).read_text()))


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (found,) = [p for p in dashboard["panels"] if p["title"] == title]
    return dict(found)


def _series(
    prometheus: Prometheus,
    dashboard: dict[str, Any],
    title: str,
    variables: dict[str, str],
    ref: str = "A",
) -> list[tuple[dict[str, str], float]]:
    """A panel query's series at the current time, as (labels, value)."""
    (target,) = [t for t in _panel(dashboard, title)["targets"] if t["refId"] == ref]
    result = prometheus.query(_substitute(target["expr"], variables))
    if result["resultType"] == "scalar":
        return [({}, float(result["result"][1]))]
    return [(item["metric"], float(item["value"][1])) for item in result["result"]]


def _by(series: list[tuple[dict[str, str], float]], *labels: str) -> dict[Any, float]:
    """{label value (or tuple of them): value}; every key once."""
    out: dict[Any, float] = {}
    for metric, value in series:
        key = tuple(metric.get(label, "") for label in labels)
        assert key not in out, f"{key} twice in {series}"
        out[key[0] if len(key) == 1 else key] = value
    return out


def _one(series: list[tuple[dict[str, str], float]]) -> float:
    assert len(series) == 1, series
    return series[0][1]


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
    mosquitto,
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
    # The bridge labels model histograms with the rollouts it reads as live: r-9 and r-11,
    # paused so the evaluations the devices' events queue leave them so (the rollout
    # panels read the stub's progress, where r-9 is running and r-11 absent).
    live_rollout(9, status="paused")
    live_rollout(11, status="paused")
    for device_id, hardware, *_ in FLEET:
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

        # and a first failure with an error code after Prometheus has seen the counters
        # at zero (a counter born at its first value would hide it from increase())
        # (scraped for a while, so increase() extrapolates by a small fraction only)
        _wait(
            lambda: _has_data(
                prometheus.query(
                    "count_over_time("
                    'fleet_update_outcomes_total{phase="failed", code="disk_full"}[1m]) >= 8'
                )
            ),
            30,
            "the outcome counters at zero",
        )
        publish(
            devices.clients["dev-a1"],
            "dev-a1",
            Channel.EVENTS,
            event_payload(Phase.FAILED, ErrorCode.DISK_FULL, seq=10),
        )

        # then every panel of every dashboard has data (retried while scrapes accumulate
        # for the 15 s rates)
        failures = _failing_panels(prometheus)
        deadline = time.monotonic() + 30
        while failures and time.monotonic() < deadline:
            time.sleep(1)
            failures = _failing_panels(prometheus)
        assert not failures, "\n".join(failures) + f"\n--- web\n{web.log_tail()}"

        assert not _has_data(prometheus.query("fleet_no_such_metric"))  # the check can fail
        _assert_overview_values(prometheus)
        _assert_rollout_values(prometheus)
        _assert_ab_values(prometheus)
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


def _assert_overview_values(prometheus: Prometheus) -> None:
    overview = _dashboard("fleet-overview.json")
    variables = _variables(prometheus, overview)
    # 6 devices enrolled, dev-c1's connection died
    assert _one(_series(prometheus, overview, "Devices online", variables)) == 5
    assert _one(_series(prometheus, overview, "Devices offline", variables)) == 1
    # the failure after Prometheus started shows from its first occurrence (extrapolated by
    # increase() over part of a scrape interval at most)
    failures = _by(
        _series(prometheus, overview, "Update failures by error code (24 h)", variables), "code"
    )
    assert set(failures) == {"disk_full"}
    assert round(failures["disk_full"]) == 1
    # only the running rollout's devices (r-9), not every rollout of the day
    by_status = _by(
        _series(prometheus, overview, "Devices of unfinished rollouts by status", variables),
        "status",
    )
    assert {k: v for k, v in by_status.items() if v} == {
        "pending": 15,
        "in_progress": 1,
        "succeeded": 3,
        "failed": 1,
    }


def _assert_rollout_values(prometheus: Prometheus) -> None:
    dashboard = _dashboard("fleet-rollout.json")
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "rollout"]
    # the newest running rollout first, though r-10 is newer (and finished)
    assert _options(prometheus, dashboard, variable, {}) == ["r-9", "r-10", "r-8", "r-7"]
    assert _variables(prometheus, dashboard)["rollout"] == "r-9"
    rate = "Install failure rate by arm (the engine's gate)"
    gates = "Gates: value, threshold, verdict"

    def read(rollout: str) -> tuple[dict[Any, float], dict[Any, float], dict[Any, float]]:
        variables = _variables(prometheus, dashboard, rollout=rollout)
        value = _by(_series(prometheus, dashboard, gates, variables, "A"), "arm", "gate")
        threshold = _by(_series(prometheus, dashboard, gates, variables, "B"), "arm", "gate")
        verdict = _by(_series(prometheus, dashboard, gates, variables, "C"), "arm", "gate", "state")
        # the table's three queries join on (arm, gate): one verdict per gate
        assert set(value) <= set(threshold) == {key[:2] for key in verdict}
        assert _by(_series(prometheus, dashboard, rate, variables), "arm") == {
            arm: v for (arm, gate), v in value.items() if gate == "install_failure_rate"
        }
        assert _one(_series(prometheus, dashboard, rate, variables, "B")) == 0.05
        # the two verdict stats count what the table shows
        for title, state in (
            ("Gates breached (arm x gate)", "breached"),
            ("Gates not judged yet (arm x gate)", "insufficient_data"),
        ):
            counted = _one(_series(prometheus, dashboard, title, variables))
            assert counted == len([key for key in verdict if key[2] == state]), (rollout, title)
        return value, threshold, {key: 1 for key in verdict}

    # running A/B: B has a failure, not judged yet: never "passing"
    value, _, verdict = read("r-9")
    assert value[("A", "install_failure_rate")] == 0.0
    assert value[("B", "install_failure_rate")] == 0.5
    assert ("B", "install_failure_rate", "insufficient_data") in verdict
    assert ("A", "install_failure_rate", "passing") in verdict
    assert not [key for key in verdict if key[2] == "breached"]
    # every device failed: 100 %, breached, failures by code
    value, _, verdict = read("r-7")
    assert value == {("main", "install_failure_rate"): 1.0}
    assert set(verdict) == {("main", "install_failure_rate", "breached")}
    variables = _variables(prometheus, dashboard, rollout="r-7")
    failures = _series(prometheus, dashboard, "Failures by arm and error code", variables)
    assert _by(failures, "arm", "code") == {("main", "health_check_failed"): 3}
    # an operator's abort of an A/B rollout is no failure of either arm
    value, _, verdict = read("r-8")
    assert value == {("A", "install_failure_rate"): 0.0, ("B", "install_failure_rate"): 0.0}
    assert {key[2] for key in verdict} == {"passing"}


def _assert_ab_values(prometheus: Prometheus) -> None:
    dashboard = _dashboard("fleet-ab.json")
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "rollout"]
    assert _options(prometheus, dashboard, variable, {}) == ["r-9", "r-8"]  # A/B ones only
    variables = _variables(prometheus, dashboard)
    assert (variables["rollout"], variables["arm_a"], variables["arm_b"]) == ("r-9", "A", "B")
    # the histogram p95 agrees with the rollups' exact p95 and tells the two arms apart
    histogram = _by(
        _series(prometheus, dashboard, "p95 latency by arm (histograms)", variables), "arm"
    )
    rollup = _by(
        [
            (item["metric"], float(item["value"][1]))
            for item in prometheus.query(
                'fleet_telemetry_arm_stat{rollout="r-9", metric="latency_ms", stat="p95"}'
            )["result"]
        ],
        "arm",
    )
    assert rollup == pytest.approx(LATENCY_MS)
    assert set(histogram) == {"A", "B"}
    for arm, exact in rollup.items():
        assert abs(histogram[arm] - exact) / exact < 0.1, (arm, histogram, rollup)
    assert histogram["B"] < rollup["A"] < histogram["A"]
    # r-11's arm A, running at the same time, has its own series and moves none of r-9's
    # (its own query: r-11 is no A/B rollout of the stub's, so the dashboard offers none)
    other = _by(
        [
            (item["metric"], float(item["value"][1]))
            for item in prometheus.query(
                "1000 * histogram_quantile(0.95, sum by (arm, le) (rate("
                'fleet_model_latency_seconds_bucket{model="kws", rollout="r-11"}[15s])))'
            )["result"]
        ],
        "arm",
    )
    assert set(other) == {"A"}
    assert other["A"] == pytest.approx(OTHER_ROLLOUT_LATENCY_MS, rel=0.1)
    assert histogram["A"] < OTHER_ROLLOUT_LATENCY_MS / 2
    ratio = _one(
        _series(prometheus, dashboard, "p95 latency B / A (newest minute rollup)", variables)
    )
    assert ratio == pytest.approx(0.19 / 0.23)
    # nothing at all until two different arms are chosen
    for arm_b in ("", "A"):
        chosen = _variables(prometheus, dashboard, arm_b=arm_b)
        assert chosen["arm_b"] == arm_b
        shown = [
            title
            for title, expr in _panel_targets(dashboard)
            if _has_data(prometheus.query(_substitute(expr, chosen)))
        ]
        assert not shown, (arm_b, shown)
