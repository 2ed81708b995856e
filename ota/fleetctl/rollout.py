"""``fleetctl rollout``: create and steer rollouts through the rollout API
(docs/rollouts.md), and show them to people."""

import argparse
import json
from pathlib import Path
from typing import Any

from device_agent.protocol import identifiers
from ota.fleetctl.http import CliError, UsageError, client_from_env
from ota.fleetctl.options import print_result

ROLLOUT_ACTIONS = ("start", "pause", "resume", "abort", "schedule", "unschedule", "promote")


def _percent(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} is not a number") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} must be in (0, 100]")
    return value


def parse_stages(text: str) -> list[dict[str, float]]:
    """``1:10,10:30,100:0``: percent of the devices, then minutes to bake, per stage."""
    stages = []
    for item in text.split(","):
        percent, sep, bake = item.strip().partition(":")
        try:
            minutes = float(bake) if sep else 0.0
        except ValueError:
            minutes = -1.0
        if minutes < 0 or minutes != minutes:
            raise argparse.ArgumentTypeError(
                f"stage {item!r}: PERCENT:BAKE_MINUTES, e.g. 10:30 (bake >= 0)"
            )
        stages.append({"percent": _percent(percent, f"stage {item!r}"), "bake_minutes": minutes})
    percents = [s["percent"] for s in stages]
    if any(b <= a for a, b in zip(percents, percents[1:], strict=False)):
        raise argparse.ArgumentTypeError(f"stages {text!r}: percents must increase")
    return stages


def parse_arm(text: str) -> dict[str, Any]:
    """``A=1.3.0:50``: arm name, version, weight (default 1)."""
    name, sep, rest = text.partition("=")
    version, colon, weight = rest.partition(":")
    if not sep or not name or not version:
        raise argparse.ArgumentTypeError(f"arm {text!r}: NAME=VERSION[:WEIGHT], e.g. B=1.4.0:50")
    for kind, value in ((identifiers.ARM_NAME, name), (identifiers.VERSION, version)):
        if not kind.is_valid(value):
            raise argparse.ArgumentTypeError(
                f"arm {text!r}: {value!r} is not a valid {kind.name}: {kind.rule()}"
            )
    arm: dict[str, Any] = {"name": name, "version": version}
    if colon:
        try:
            arm["weight"] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"arm {text!r}: weight {weight!r} is not a number"
            ) from None
        if not arm["weight"] > 0:
            raise argparse.ArgumentTypeError(f"arm {text!r}: the weight must be above 0")
    return arm


def parse_json_option(text: str) -> dict[str, Any]:
    """A JSON object, or ``@FILE`` holding one."""
    raw = text
    if text.startswith("@"):
        try:
            raw = Path(text[1:]).read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"{text}: {exc.strerror}") from None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def rollout_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /api/v1/rollouts/`` body of ``fleetctl rollout create``."""
    strategy = args.strategy or ("ab" if args.arm else "phased")
    body: dict[str, Any] = {"model": args.model, "strategy": strategy}
    if strategy == "phased":
        if not args.version or args.arm:
            raise UsageError("a phased rollout needs --version and no --arm")
        body["version"] = args.version
    else:
        if args.version or len(args.arm) < 2:
            raise UsageError("an A/B rollout needs two or more --arm and no --version")
        names = [arm["name"] for arm in args.arm]
        if args.baseline not in names:
            raise UsageError(f"--baseline must name one of the arms ({', '.join(names)})")
        body["arms"] = [{**arm, "baseline": arm["name"] == args.baseline} for arm in args.arm]
    if args.stages:
        body["stages"] = args.stages
    selection: dict[str, Any] = {
        key: values
        for key, values in (
            ("groups", args.group),
            ("dynamic_groups", args.dynamic_group),
            ("devices", args.device),
            ("tags", args.tag),
            ("hardware", args.hardware),
        )
        if values
    }
    if args.all:
        selection["all"] = True
    body["selection"] = selection
    policy = dict(args.policy or {})
    for key, value in (
        ("rate_per_minute", args.rate),
        ("rate_burst", args.burst),
        ("on_breach", args.on_breach),
        ("max_failure_rate", args.max_failure_rate),
    ):
        if value is not None:
            policy[key] = value
    if policy:
        body["policy"] = policy
    if args.description:
        body["description"] = args.description
    if args.schedule or args.starts_at:
        body["schedule"] = True
    if args.starts_at:
        body["starts_at"] = args.starts_at
    return body


def _stage_text(stage: dict[str, Any]) -> str:
    bake = stage.get("bake_minutes") or 0
    return f"{stage.get('percent', 0):g} %" + (f" (bake {bake:g} min)" if bake else "")


def rollout_text(rollout: dict[str, Any]) -> str:
    """A rollout for people: what, where, how far, and the gates."""
    stages = rollout.get("stages") or []
    what = rollout.get("version") or ", ".join(
        f"{a['name']}={a['version']}" for a in rollout.get("arms") or []
    )
    current = rollout.get("current_stage", 0)
    lines = [
        f"{rollout['id']}  {rollout['model']}  {rollout['strategy']} {what}  "
        f"{rollout['status']}  stage {current + 1}/{len(stages)}"
    ]
    lines.append("  stages     " + " -> ".join(_stage_text(s) for s in stages))
    arms = rollout.get("arms") or []
    if arms:
        lines.append(
            "  arms       "
            + ", ".join(
                f"{a['name']} {a['version']} (weight {a.get('weight', 1):g}"
                + (", baseline)" if a.get("baseline") else ")")
                for a in arms
            )
            + (f"; promoted {rollout['promoted_arm']}" if rollout.get("promoted_arm") else "")
        )
    selection = rollout.get("selection") or {}
    chosen = [
        f"{key}={','.join(values)}"
        for key, values in selection.items()
        if isinstance(values, list) and values
    ]
    lines.append("  selection  " + ("all" if selection.get("all") else "; ".join(chosen)))
    progress = rollout.get("progress")
    if isinstance(progress, dict):
        total = progress.get("total") or {}
        counts = ", ".join(f"{state} {n}" for state, n in sorted(total.items()))
        devices = f"  devices    {progress.get('devices', 0)}"
        lines.append(devices + (f": {counts}" if counts else ""))
    figures = rollout.get("gate_figures") or {}
    for gate in figures.get("gates") or []:
        lines.append(f"  gate       {gate['gate']} {gate['status']}: {gate['detail']}")
    when = [f"created {rollout.get('created_at')} by {rollout.get('created_by') or '-'}"]
    for key in ("starts_at", "started_at", "finished_at"):
        if rollout.get(key):
            when.append(f"{key.removesuffix('_at').replace('_', ' ')} {rollout[key]}")
    lines.append("  " + "; ".join(when))
    return "\n".join(lines)


def audit_text(events: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {e['at']}  {e['from_status'] or '-'} -> {e['to_status']}  {e['actor_name']}: "
        f"{e['reason']}"
        for e in events
    )


def cmd_rollout_create(args: argparse.Namespace) -> int:
    body = rollout_body(args)
    client = client_from_env()
    rollout = client.post("/api/v1/rollouts/", body)
    if args.start:
        try:
            rollout = client.post(
                f"/api/v1/rollouts/{rollout['id']}/start", {"reason": args.reason}
            )
        except CliError as exc:
            created = f"created {rollout['id']} ({rollout['status']})"
            raise CliError(exc.code, f"{created} but not started: {exc.detail}") from None
    print_result(args, rollout, rollout_text(rollout))
    return 0


def cmd_rollout_list(args: argparse.Namespace) -> int:
    client = client_from_env()
    params = {k: v for k, v in (("model", args.model), ("status", args.status)) if v}
    params["page_size"] = str(min(args.limit, 500))
    page = client.get("/api/v1/rollouts/", params)
    rollouts = page.get("results", []) if isinstance(page, dict) else page
    rows = [
        f"{r['id']:<8} {r['model']:<16} {r['strategy']:<7} "
        f"{r.get('version') or '/'.join(a['version'] for a in r.get('arms') or []):<16} "
        f"{r['status']:<12} {r.get('current_stage', 0) + 1}/{len(r.get('stages') or [])}"
        for r in rollouts[: args.limit]
    ]
    header = f"{'ID':<8} {'MODEL':<16} {'STRATEGY':<7} {'VERSION':<16} {'STATUS':<12} STAGE"
    print_result(args, rollouts[: args.limit], "\n".join([header, *rows]))
    return 0


def cmd_rollout_show(args: argparse.Namespace) -> int:
    client = client_from_env()
    rollout = client.get(f"/api/v1/rollouts/{args.id}/")
    text = rollout_text(rollout)
    if args.audit:
        rollout = {**rollout, "audit": client.get(f"/api/v1/rollouts/{args.id}/audit")}
        text += "\n  audit:\n" + audit_text(rollout["audit"])
    print_result(args, rollout, text)
    return 0


def cmd_rollout_action(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if args.action == "promote":
        body["arm"] = args.arm
    if args.action == "schedule" and args.starts_at:
        body["starts_at"] = args.starts_at
    client = client_from_env()
    rollout = client.post(f"/api/v1/rollouts/{args.id}/{args.action}", body)
    print_result(args, rollout, rollout_text(rollout))
    return 0


ACTION_HELP = {
    "start": "start a draft or scheduled rollout now (ota.start_rollout)",
    "pause": "stop notifying new devices; those notified go on (ota.control_rollout)",
    "resume": "resume a paused rollout, acknowledging its failures so far",
    "abort": "abort and roll back every touched device (ota.control_rollout)",
    "schedule": "move a draft to scheduled, optionally with a start time",
    "unschedule": "move a scheduled rollout back to draft",
    "promote": "A/B: re-target every device to the winning arm (ota.control_rollout)",
}
