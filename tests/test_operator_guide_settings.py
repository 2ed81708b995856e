"""docs/operator-guide.md names every setting the code reads, so it stays complete.

A setting is an environment variable read by the shipped code (``os.environ``,
``os.getenv``, the settings module's ``_env*`` helpers, ``FOO_ENV = "NAME"`` constants), a
Django setting read with a default (``getattr(settings, "NAME", ...)``, the bridge's
``DEFAULTS``), or a key of the agent's ``config.json``. Each must appear in the guide in
backticks, exactly (so ``FLEET_TELEMETRY_MAX_AGE`` does not pass for
``FLEET_TELEMETRY_MAX_AGE_SECONDS``). The systemd units are checked against the same
list: their environment file sets only settings the code reads.
"""

import configparser
import dataclasses
import re
from pathlib import Path

import pytest
from django.core.management import get_commands

from device_agent.config import AgentConfig
from fleet.bridge.config import DEFAULTS as BRIDGE_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "operator-guide.md"
SETTINGS_PY = (ROOT / "fleet" / "settings.py").read_text()
PACKAGES = ("fleet", "ota", "telemetry", "device_agent")
# Read by the code but not settings of this project: the process's own environment.
NOT_SETTINGS = {"PATH", "PYTHONPATH", "DJANGO_SETTINGS_MODULE"}

ENV_READ = re.compile(
    r"""(?:environ\.get|getenv|\b_env(?:_int|_bool)?|\benv\.get|_require)\(\s*"([A-Z][A-Z0-9_]+)\""""
    r"""|environ\[\s*"([A-Z][A-Z0-9_]+)"\s*\]"""
    r"""|^[A-Z_]*ENV\s*=\s*"([A-Z][A-Z0-9_]+)\"""",
    re.M,
)
SETTINGS_READ = re.compile(r"""getattr\(\s*settings\s*,\s*"([A-Z][A-Z0-9_]+)\"""")


def _sources() -> list[Path]:
    files = [ROOT / "manage.py"]
    for package in PACKAGES:
        files += [
            p
            for p in sorted((ROOT / package).rglob("*.py"))
            if "migrations" not in p.parts and "esp32" not in p.parts
        ]
    return files


def settings_read() -> dict[str, str]:
    """Every setting name the code reads -> the file that reads it (the first)."""
    found: dict[str, str] = {}
    for path in _sources():
        for match in ENV_READ.finditer(path.read_text()):
            name = next(group for group in match.groups() if group)
            found.setdefault(name, str(path.relative_to(ROOT)))
        for name in SETTINGS_READ.findall(path.read_text()):
            # one fleet/settings.py sets is made from environment variables found above
            if not re.search(rf"^{name} = ", SETTINGS_PY, re.M):
                found.setdefault(name, str(path.relative_to(ROOT)))
    for name in BRIDGE_DEFAULTS:
        found.setdefault(name, "fleet/bridge/config.py")
    for field in dataclasses.fields(AgentConfig):
        found.setdefault(field.name, "device_agent/config.py")
    return {name: where for name, where in found.items() if name not in NOT_SETTINGS}


def _documented() -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", GUIDE.read_text()))


def test_the_scan_finds_the_settings_of_every_kind() -> None:
    found = settings_read()
    # one of each way of reading a setting; if the scan misses a kind, this fails
    assert {
        "FLEET_MODE",  # _env in fleet/settings.py
        "FLEET_TELEMETRY_MAX_BUFFER_ROWS",  # _env_int( on the next line
        "DJANGO_SECRET_KEY",  # _require
        "FLEET_RELEASE_KEY",  # ota/cli.py's _env
        "PROMETHEUS_MULTIPROC_DIR",  # os.environ.get
        "FLEET_METRICS_SOCKET",  # a *_ENV constant
        "NOTIFY_SOCKET",  # env.get
        "FLEET_BRIDGE_OUTBOX_WINDOW",  # the bridge's DEFAULTS
        "FLEET_METRICS_DB_CACHE_SECONDS",  # getattr(settings, ...)
        "telemetry_backlog_bytes",  # config.json
    } <= set(found)
    assert len(found) > 100


def test_the_operator_guide_names_every_setting_the_code_reads() -> None:
    documented = _documented()
    missing = {name: where for name, where in settings_read().items() if name not in documented}
    assert not missing, f"docs/operator-guide.md, Configure, lacks (read in): {missing}"


UNITS = sorted((ROOT / "deploy" / "systemd").glob("fleet-*.service"))
SERVER_UNITS = [u for u in UNITS if u.name != "fleet-agent.service"]


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text().replace("\\\n", " "))
    return parser


def test_there_is_a_unit_for_each_server_process() -> None:
    names = {u.name for u in SERVER_UNITS}
    assert names == {f"fleet-{p}.service" for p in ("web", "bridge", "worker", "beat")}


@pytest.mark.parametrize("path", SERVER_UNITS, ids=lambda p: p.name)
def test_a_server_unit_runs_a_real_command_as_the_fleet_user(path: Path) -> None:
    unit = _unit(path)
    service = unit["Service"]
    assert service["User"] == "fleet"
    assert service["EnvironmentFile"] == "/etc/fleet/fleet.env"
    assert service["Restart"] in {"always", "on-failure"}
    argv = service["ExecStart"].split()
    program = Path(argv[0]).name
    assert argv[0].startswith("/opt/fleet/.venv/bin/")
    if program == "python":
        assert argv[1] == "manage.py"
        assert argv[2] in get_commands(), f"{path.name}: no command {argv[2]}"
    elif program == "celery":
        assert argv[1:3] == ["-A", "fleet"]
        assert argv[3] in {"worker", "beat"}
    else:
        assert program == "gunicorn"
        assert argv[-1] == "fleet.wsgi"
    assert path.name in GUIDE.read_text(), f"{path.name} is not in the operator guide"


def test_the_environment_file_sets_only_settings_the_code_reads() -> None:
    read = settings_read()
    lines = (ROOT / "deploy" / "systemd" / "fleet.env.example").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    assert "FLEET_MODE" in names
    assert [n for n in names if n not in read] == []
