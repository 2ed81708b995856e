"""deploy/prometheus passes promtool (config, rules, rule unit tests) and every metric the
dashboards and alerts name is one telemetry/metrics.py defines."""

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
        "FleetManyDevicesOffline",
    } <= names


def _defined_names() -> set[str]:
    source = (ROOT / "telemetry/metrics.py").read_text()
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
def test_dashboards_are_formatted_json(path) -> None:  # type: ignore[no-untyped-def]
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
