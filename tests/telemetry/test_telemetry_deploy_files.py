"""deploy/prometheus passes promtool (config, rules, rule unit tests) and every metric the
dashboards and alerts name is one telemetry/metrics.py or telemetry/fleet_collector.py
defines."""

import json
import re
import subprocess

import pytest
import yaml
from service_check import require_service
from telemetry_system import PROMTOOL, ROOT

PROMETHEUS_DIR = ROOT / "deploy/prometheus"
GRAFANA_DIR = ROOT / "deploy/grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
NAME_RE = re.compile(r"\bfleet_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_total")


def _promtool(*args: str) -> str:
    require_service(PROMTOOL is not None, "promtool", "apt-get install -y prometheus")
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_checks_the_config_and_its_rules() -> None:
    out = _promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out


def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS" in _promtool("check", "rules", "alerts.yml")


def test_promtool_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")


def test_the_required_alerts_exist() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "FleetTelemetryBackpressureDrops",
        "FleetTelemetrySamplesDropped",
        "FleetTufTimestampStale",
        "FleetRolloutAborted",
        "FleetRolloutGateBreached",
        "FleetManyDevicesOffline",
    } <= names


def _defined_names() -> set[str]:
    # the metrics the processes count, and the fleet gauges read at scrape time
    source = "".join(
        (ROOT / path).read_text()
        for path in ("telemetry/metrics.py", "telemetry/fleet_collector.py")
    )
    return set(re.findall(r'"(fleet_[a-z0-9_]+)"', source))


def _base(name: str, defined: set[str]) -> str:
    for suffix in SUFFIXES:
        if name not in defined and name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _dashboard_exprs() -> list[tuple[str, str]]:
    exprs = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            exprs += [(path.name, t["expr"]) for t in panel.get("targets", [])]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                exprs.append((path.name, variable["query"]["query"]))
    return exprs


def test_dashboards_and_alerts_only_use_defined_metrics() -> None:
    defined = _defined_names()
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    exprs = _dashboard_exprs() + [
        ("alerts.yml", rule["expr"]) for group in rules["groups"] for rule in group["rules"]
    ]
    unknown = [
        f"{where}: {name}"
        for where, expr in exprs
        for name in NAME_RE.findall(expr)
        if _base(name, defined) not in defined and name not in defined
    ]
    assert not unknown, unknown
    assert len(exprs) > 60


def test_dashboards_are_provisionable() -> None:
    assert [p.name for p in DASHBOARDS] == [
        "fleet-ab.json",
        "fleet-ingestion.json",
        "fleet-overview.json",
        "fleet-rollout.json",
    ]
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        assert dashboard["title"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert panels
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in panels:
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                assert "device_id" not in target["expr"]  # no per-device series exist
    assert len(uids) == len(DASHBOARDS)
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/fleet.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load(
        (GRAFANA_DIR / "provisioning/datasources/fleet-prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["type"] == "prometheus"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_are_formatted_json(path) -> None:
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


def _panels(name: str) -> list[dict]:
    return list(json.loads((GRAFANA_DIR / "dashboards" / name).read_text())["panels"])


def _panel(name: str, title: str) -> dict:
    (found,) = [p for p in _panels(name) if p["title"] == title]
    return found


def _threshold_color(panel: dict, value: float) -> str:
    """The color Grafana gives `value` with the panel's absolute thresholds."""
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    color = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            color = step["color"]
    return str(color)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_stat_has_thresholds_and_no_value_text(path) -> None:
    stats = [p for p in _panels(path.name) if p["type"] == "stat"]
    for panel in stats:
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["noValue"], panel["title"]
        steps = defaults["thresholds"]["steps"]
        assert steps[0]["value"] is None, panel["title"]
        assert [s["value"] for s in steps[1:]] == sorted(s["value"] for s in steps[1:])


def test_a_healthy_tuf_timestamp_expiry_is_green_as_the_alerts_agree() -> None:
    # FleetTufTimestampStale fires under 6 h, FleetTufTimestampExpiring under 1 h
    panel = _panel("fleet-overview.json", "TUF timestamp metadata expires in")
    assert _threshold_color(panel, 86_000) == "green"
    assert _threshold_color(panel, 5 * 3600) == "orange"
    assert _threshold_color(panel, 1800) == "red"
    assert _threshold_color(panel, -60) == "red"


def test_the_confidence_heatmap_reads_buckets_as_a_heatmap() -> None:
    panel = _panel("fleet-ab.json", "Confidence distribution, arm B")
    assert panel["type"] == "heatmap"
    (target,) = panel["targets"]
    assert target["format"] == "heatmap"
    assert "_bucket" in target["expr"]
    assert "sum by (le)" in target["expr"]
    assert panel["options"]["calculate"] is False


def test_the_gates_table_merges_its_three_queries() -> None:
    panel = _panel("fleet-rollout.json", "Gates: value, threshold, verdict")
    assert [t["refId"] for t in panel["targets"]] == ["A", "B", "C"]
    assert {t["format"] for t in panel["targets"]} == {"table"}
    assert all(t["instant"] for t in panel["targets"])
    assert panel["transformations"][0]["id"] == "merge"
    assert "fleet_rollout_gate_state" in panel["targets"][2]["expr"]


def test_every_ab_panel_waits_for_two_different_arms() -> None:
    for panel in _panels("fleet-ab.json"):
        for target in panel.get("targets", []):
            assert target["expr"].endswith(
                ' and on () (count(count by (arm) (fleet_rollout_devices{rollout="$rollout", '
                'arm=~"$arm_a|$arm_b"})) == 2)'
            ), panel["title"]
    variables = {
        v["name"]: v
        for v in json.loads((GRAFANA_DIR / "dashboards/fleet-ab.json").read_text())["templating"][
            "list"
        ]
    }
    assert 'arm!="$arm_a"' in variables["arm_b"]["query"]["query"]
    assert not variables["arm_a"]["current"]
    assert not variables["arm_b"]["current"]
