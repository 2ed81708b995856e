"""``fleetctl rollout``: CI opens a canary right after publishing, operators steer it, and
refusals come back with the API's error codes; then the argument checks without a server."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from rollout_helpers import artifact, devices, use_own_director_key

from fleet.models import Group
from ota import cli
from ota.fleetctl import rollout as fleetctl_rollout

HW = "linux-x86_64-fp32"


@pytest.fixture
def fleet(settings, tmp_path):
    """kws 1.3.0 and 1.4.0 published, five devices, three of them in group canary."""
    use_own_director_key(settings, tmp_path)
    artifact("1.3.0")
    artifact("1.4.0")
    all_devices = devices(5)
    canary = Group.objects.create(name="canary")
    canary.devices.add(*all_devices[:3])
    return all_devices


@pytest.fixture
def operator_token(db):
    """An operator's token as the docs make one: ``api_token_create --role operator``."""
    out = io.StringIO()
    call_command("api_token_create", "--user", "ops", "--role", "operator", stdout=out)
    return out.getvalue().strip()


def _run(monkeypatch, capsys, url, token, *argv):
    """Run fleetctl in-process: (exit status, stdout, stderr)."""
    monkeypatch.setenv("FLEET_URL", url)
    monkeypatch.setenv("FLEET_TOKEN", token)
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.django_db(transaction=True)
def test_ci_opens_a_canary_and_an_operator_steers_it(
    live_server, fleet, ci_token, operator_token, monkeypatch, capsys
):
    def ci(*argv):
        return _run(monkeypatch, capsys, live_server.url, ci_token, *argv)

    def ops(*argv):
        return _run(monkeypatch, capsys, live_server.url, operator_token, *argv)

    # given CI has published 1.4.0, when it opens a canary
    status, out, err = ci(
        "rollout", "create", "--model", "kws", "--version", "1.4.0",
        "--stages", "1:10,10:30,100:0", "--group", "canary", "--hardware", HW,
        "--description", "nightly", "--json",
    )  # fmt: skip
    # then a draft exists with CI's stages and selection
    assert status == 0, err
    created = json.loads(out)
    rollout_id = created["id"]
    assert created["status"] == "draft"
    assert created["version"] == "1.4.0"
    assert [(s["percent"], s["bake_minutes"]) for s in created["stages"]] == [
        (1, 10),
        (10, 30),
        (100, 0),
    ]
    assert created["selection"]["groups"] == ["canary"]
    assert created["selection"]["hardware"] == [HW]
    assert created["created_by"] == "ci"

    # CI may not start it: the API's code and a non-zero status
    status, out, err = ci("rollout", "start", rollout_id)
    assert status == 1
    assert err.startswith("fleetctl: forbidden: ")
    assert "ota.start_rollout" in err

    # an operator starts, pauses, resumes and aborts it
    status, out, err = ops("rollout", "start", rollout_id, "--reason", "canary go")
    assert status == 0, err
    assert out.startswith(f"{rollout_id}  kws  phased 1.4.0  running  stage 1/3")
    assert "1 % (bake 10 min) -> 10 % (bake 30 min) -> 100 %" in out
    assert "groups=canary; hardware=" + HW in out
    for action, reason, expected in (
        ("pause", "looking at latency", {"paused"}),
        ("resume", "fine", {"running"}),
        # the engine may have rolled the devices back by the time the answer is written
        ("abort", "bad latency", {"aborted", "rolled_back"}),
    ):
        status, out, err = ops("rollout", action, rollout_id, "--reason", reason, "--json")
        assert status == 0, err
        assert json.loads(out)["status"] in expected

    # aborting again is refused with the API's code
    status, out, err = ops("rollout", "abort", rollout_id, "--reason", "again")
    assert status == 1
    assert err.startswith("fleetctl: conflict: ")

    # the audit tells who did what and why
    status, out, err = ci("rollout", "show", rollout_id, "--audit", "--json")
    assert status == 0, err
    audit = json.loads(out)["audit"]
    trail = [(e["to_status"], e["actor_name"], e["reason"]) for e in audit]
    assert trail[0] == ("draft", "ci", "created")
    assert ("running", "ops", "canary go") in trail
    assert ("paused", "ops", "looking at latency") in trail
    assert ("aborted", "ops", "bad latency") in trail
    status, out, err = ci("rollout", "show", rollout_id, "--audit")
    assert status == 0, err
    assert "ops: bad latency" in out

    # and the list shows it, newest first
    status, out, err = ci("rollout", "list", "--model", "kws")
    assert status == 0, err
    header, first = out.splitlines()[:2]
    assert header.split() == ["ID", "MODEL", "STRATEGY", "VERSION", "STATUS", "STAGE"]
    assert first.split()[:3] == [rollout_id, "kws", "phased"]


@pytest.mark.django_db(transaction=True)
def test_an_operator_creates_and_starts_an_ab_rollout_in_one_command(
    live_server, fleet, operator_token, monkeypatch, capsys
):
    status, out, err = _run(
        monkeypatch, capsys, live_server.url, operator_token,
        "rollout", "create", "--model", "kws", "--arm", "A=1.3.0:50", "--arm", "B=1.4.0:50",
        "--baseline", "A", "--all", "--rate", "600", "--on-breach", "abort", "--start",
        "--reason", "experiment", "--json",
    )  # fmt: skip
    assert status == 0, err
    rollout = json.loads(out)
    assert rollout["status"] == "running"
    assert rollout["strategy"] == "ab"
    assert [(a["name"], a["version"], a["weight"], a["baseline"]) for a in rollout["arms"]] == [
        ("A", "1.3.0", 50, True),
        ("B", "1.4.0", 50, False),
    ]
    assert rollout["policy"]["rate_per_minute"] == 600
    assert rollout["policy"]["on_breach"] == "abort"
    assert rollout["progress"]["devices"] == 5


@pytest.mark.django_db(transaction=True)
def test_refusals_carry_the_api_codes(
    live_server, fleet, ci_token, operator_token, monkeypatch, capsys
):
    url = live_server.url
    # a version that is not published
    status, out, err = _run(
        monkeypatch, capsys, url, ci_token,
        "rollout", "create", "--model", "kws", "--version", "9.9.9", "--all",
    )  # fmt: skip
    assert (status, out) == (1, "")
    assert err.startswith("fleetctl: not_found: kws 9.9.9 is not published")
    # an empty selection: the server's check, its code
    status, out, err = _run(
        monkeypatch, capsys, url, ci_token, "rollout", "create", "--model", "kws",
        "--version", "1.4.0",
    )  # fmt: skip
    assert status == 1
    assert err.startswith("fleetctl: malformed: the selection is empty")
    # CI's --start: the draft is made, the start refused, and both are said
    status, out, err = _run(
        monkeypatch, capsys, url, ci_token,
        "rollout", "create", "--model", "kws", "--version", "1.4.0", "--all", "--start",
    )  # fmt: skip
    assert status == 1
    assert err.startswith("fleetctl: forbidden: created r-")
    assert "(draft) but not started" in err
    # no such rollout, and a bad token
    status, out, err = _run(monkeypatch, capsys, url, ci_token, "rollout", "show", "r-999")
    assert (status, err) == (1, "fleetctl: not_found: no rollout r-999\n")
    status, out, err = _run(monkeypatch, capsys, url, "fleet_nope", "rollout", "list")
    assert status == 1
    assert err.startswith("fleetctl: unauthorized: ")


@pytest.mark.django_db(transaction=True)
def test_the_console_script_exits_non_zero_with_the_code(live_server, fleet, ci_token):
    fleetctl = Path(sys.executable).parent / "fleetctl"
    env = {**os.environ, "FLEET_URL": live_server.url, "FLEET_TOKEN": ci_token}
    done = subprocess.run(
        [str(fleetctl), "rollout", "pause", "r-4242", "--reason", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    # CI lacks ota.control_rollout: the permission check answers before the lookup
    assert done.stderr.startswith("fleetctl: forbidden: ")
    usage = subprocess.run(
        [str(fleetctl), "rollout", "create", "--model", "kws", "--version", "1.4.0",
         "--stages", "50,10"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert usage.returncode == 2
    assert "percents must increase" in usage.stderr


# --- arguments, without a server ------------------------------------------------------------


def test_stages_are_percent_and_bake_minutes():
    assert cli.parse_stages("1:10,10:30,100:0") == [
        {"percent": 1.0, "bake_minutes": 10.0},
        {"percent": 10.0, "bake_minutes": 30.0},
        {"percent": 100.0, "bake_minutes": 0.0},
    ]
    assert cli.parse_stages("5, 100") == [
        {"percent": 5.0, "bake_minutes": 0.0},
        {"percent": 100.0, "bake_minutes": 0.0},
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stages", "1:x"], "stage '1:x': PERCENT:BAKE_MINUTES"),
        (["--stages", "0:5"], "must be in (0, 100]"),
        (["--stages", "150"], "must be in (0, 100]"),
        (["--stages", "10:-1"], "bake >= 0"),
        (["--stages", "50,10"], "percents must increase"),
        (["--tag", "site=lab"], "argument --tag: 'site=lab' is not a valid tag name"),
        (["--policy", "{not json"], "not JSON"),
        (["--policy", "[1]"], "must be a JSON object"),
        (["--arm", "A=1.3.0"], "needs two or more --arm and no --version"),
        (["--strategy", "ab"], "needs two or more --arm"),
    ],
)
def test_bad_create_arguments_are_usage_errors(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("FLEET_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FLEET_TOKEN", "t")
    base = ["rollout", "create", "--model", "kws", "--all"]
    if "--arm" not in argv and "--strategy" not in argv:
        base += ["--version", "1.4.0"]
    with pytest.raises(SystemExit) as exited:
        cli.main(base + argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        (["--arm", "A=1.3.0:50", "--arm", "B=1.4.0:50"], "--baseline must name one of the arms"),
        (["--arm", "A=1.3.0:0", "--arm", "B=1.4.0"], "the weight must be above 0"),
        (["--arm", "A:1.3.0", "--arm", "B=1.4.0"], "NAME=VERSION[:WEIGHT]"),
        (["--arm", "A=1.3.0:x", "--arm", "B=1.4.0"], "weight 'x' is not a number"),
    ],
)
def test_bad_arms_are_usage_errors(arms, message, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["rollout", "create", "--model", "kws", "--all", *arms])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_abort_needs_a_reason_and_promote_an_arm(capsys):
    for argv in (["rollout", "abort", "r-1"], ["rollout", "promote", "r-1"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2
    assert "--arm" in capsys.readouterr().err


def test_without_a_server_url_nothing_is_sent(monkeypatch, capsys):
    monkeypatch.delenv("FLEET_URL", raising=False)
    assert cli.main(["rollout", "list"]) == 1
    assert capsys.readouterr().err == "fleetctl: malformed: set FLEET_URL\n"


def test_the_create_body_maps_every_option():
    args = cli.build_parser().parse_args(
        [
            "rollout", "create", "--model", "kws", "--arm", "A=1.3.0", "--arm", "B=1.4.0:3",
            "--baseline", "B", "--group", "g1", "--group", "g2", "--dynamic-group", "lab",
            "--device", "dev-1", "--tag", "cam", "--hardware", HW,
            "--policy", '{"retries": 2, "rate_per_minute": 5}', "--rate", "50",
            "--burst", "1", "--on-breach", "abort", "--max-failure-rate", "0.02",
            "--starts-at", "2030-01-01T02:00:00Z",
        ]
    )  # fmt: skip
    assert fleetctl_rollout.rollout_body(args) == {
        "model": "kws",
        "strategy": "ab",
        "arms": [
            {"name": "A", "version": "1.3.0", "baseline": False},
            {"name": "B", "version": "1.4.0", "weight": 3.0, "baseline": True},
        ],
        "selection": {
            "groups": ["g1", "g2"],
            "dynamic_groups": ["lab"],
            "devices": ["dev-1"],
            "tags": ["cam"],
            "hardware": [HW],
        },
        "policy": {
            "retries": 2,
            "rate_per_minute": 50.0,
            "rate_burst": 1,
            "on_breach": "abort",
            "max_failure_rate": 0.02,
        },
        "schedule": True,
        "starts_at": "2030-01-01T02:00:00Z",
    }
