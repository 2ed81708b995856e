"""``fleetctl``: the CI side of publishing (imports no Django).

    fleetctl keygen --out DIR
    fleetctl publish FILE --name kws --version 1.4.0 --hardware esp32s3-int8 --format tflite
    fleetctl resign --name kws
    fleetctl rollout create --model kws --version 1.4.0 --stages 1:10,10:30,100:0 --group canary
    fleetctl rollout list | show ID | start ID | pause ID | resume ID | abort ID --reason ...

Configured by FLEET_URL, FLEET_TOKEN and FLEET_RELEASE_KEY (the release private key
file). The release key never leaves CI: fleetctl fetches the model's current targets
metadata, adds the new target, signs it and uploads metadata and bytes in one request.
The rollout commands talk to the rollout API (docs/rollouts.md). Every command takes
--json to print JSON instead of text. Exit status: 0 done; 1 refused by the server (the
API's error code is printed) or the server not reached (``unreachable``, ``timeout``,
``connection_lost``); 2 bad usage.
"""

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer
from urllib3.exceptions import MaxRetryError, NewConnectionError

from device_agent.protocol import identifiers
from device_agent.protocol.identifiers import IdentifierKind
from ota.signing import KeyFileError, keypair_generate, signer_load

RESERVED = {"version", "hardware", "format", "release_counter", "floor"}
MAX_ATTEMPTS = 5
CHUNK = 1024 * 1024


class UsageError(Exception):
    """Options that do not fit together: argparse reports it (exit status 2)."""


class CliError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class MultipartBody:
    """``multipart/form-data`` with the metadata part, then the file streamed from disk.

    It has a length, so requests sends a Content-Length and streams the iterator: the
    artifact is never held in memory (requests-toolbelt's encoder did the same, but
    recomputed the body's length on every read).
    """

    def __init__(self, metadata: bytes, path: Path) -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self.path = path
        self.head = (
            (
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="metadata"; filename="metadata.json"\r\n'
                "Content-Type: application/json\r\n\r\n"
            ).encode()
            + metadata
            + (
                f"\r\n--{boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="artifact"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
        )
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.size = len(self.head) + path.stat().st_size + len(self.tail)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        with self.path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        yield self.tail


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise CliError("malformed", f"set {name}")
    return value


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["User-Agent"] = "fleetctl/1"

    def _check(self, response: requests.Response) -> Any:
        if response.ok:
            return response.json()
        try:
            error = response.json()["error"]
            raise CliError(error["code"], error["detail"])
        except (ValueError, KeyError, TypeError):
            raise CliError(
                "malformed", f"HTTP {response.status_code}: {response.text[:200]}"
            ) from None

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._check(self.session.get(f"{self.url}{path}", params=params, timeout=30))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(self.session.post(f"{self.url}{path}", json=body, timeout=60))

    def metadata(self, name: str) -> Metadata[Targets] | None:
        body = self._check(
            self.session.get(f"{self.url}/api/v1/models/{name}/metadata", timeout=30)
        )
        if body.get("metadata") is None:
            return None
        md: Metadata[Any] = Metadata.from_dict(body["metadata"])
        if not isinstance(md.signed, Targets):
            raise CliError("malformed", "the server returned non-targets metadata")
        return md

    def publish(self, name: str, md: Metadata[Targets], path: Path) -> Any:
        body = MultipartBody(md.to_bytes(JSONSerializer()), path)
        response = self.session.post(
            f"{self.url}/api/v1/models/{name}/publish",
            data=body,
            headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
            timeout=(30, 3600),
        )
        return self._check(response)

    def put_metadata(self, name: str, md: Metadata[Targets]) -> Any:
        return self._check(
            self.session.put(
                f"{self.url}/api/v1/models/{name}/metadata",
                json={"metadata": md.to_dict()},
                timeout=30,
            )
        )


def _server(exc: requests.RequestException) -> str:
    """The server a failed request was for: scheme://host:port, else FLEET_URL."""
    url = exc.request.url if exc.request is not None and exc.request.url else None
    if url is None:
        return os.environ.get("FLEET_URL", "").strip() or "FLEET_URL"
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a transport error, without urllib3's object reprs."""
    reason: object = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    text = str(reason)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    return re.sub(r"^<[^>]*>: ", "", text)[:200] or type(reason).__name__


def transport_error(exc: requests.RequestException) -> CliError:
    """A request that got no answer from the server, as a stable code.

    ``unreachable``: no connection (refused, no such host, connect timeout, TLS handshake);
    ``timeout``: connected, but no answer in time; ``connection_lost``: the connection
    broke during the exchange; ``malformed``: FLEET_URL is not an http(s) URL.
    """
    server = _server(exc)
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema,
    ):
        return CliError("malformed", f"FLEET_URL must be http(s)://HOST[:PORT]: {exc}")
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError) or isinstance(
        cause, NewConnectionError
    ):
        return CliError(
            "unreachable",
            f"cannot reach the server at {server} ({_reason(exc)}): check FLEET_URL and "
            "that the server is running",
        )
    if isinstance(exc, requests.Timeout):
        return CliError("timeout", f"the server at {server} did not answer in time")
    return CliError(
        "connection_lost", f"the connection to the server at {server} broke: {_reason(exc)}"
    )


def file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def parse_meta(items: list[str]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError("malformed", f"--meta {item!r} is not KEY=VALUE")
        if key in RESERVED:
            raise CliError("malformed", f"--meta {key} is set by its own option")
        try:
            # TUF signs canonical JSON, which has no floats: keep decimals as strings.
            facts[key] = json.loads(raw, parse_float=str)
        except ValueError:
            facts[key] = raw
    return facts


def next_metadata(current: Metadata[Targets] | None, expires_days: int) -> Metadata[Targets]:
    expires = (datetime.now(UTC) + timedelta(days=expires_days)).replace(microsecond=0)
    if current is None:
        return Metadata(Targets(version=1, expires=expires))
    current.signed.version += 1
    current.signed.expires = expires
    return current


def release_counter_for(md: Metadata[Targets], version: str) -> int:
    """The counter of an existing variant of this version, else one above every other."""
    counters = {}
    for target in md.signed.targets.values():
        custom = target.custom
        if isinstance(custom.get("release_counter"), int):
            counters[custom.get("version")] = custom["release_counter"]
    if version in counters:
        return int(counters[version])
    return max(counters.values(), default=0) + 1


def sign(md: Metadata[Targets], signer: Signer) -> None:
    md.signatures.clear()
    md.sign(signer)


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = keypair_generate(out / "release.key", out / "release.pub")
    written = {
        "private_key": str(out / "release.key"),
        "public_key": str(out / "release.pub"),
        "keyid": key.keyid,
    }
    text = (
        f"wrote {out / 'release.key'} (keep it secret: CI only) and {out / 'release.pub'}\n"
        f"keyid {key.keyid}"
    )
    _print(args, written, text)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError("malformed", f"{path} is not a file")
    signer = signer_load(Path(_env("FLEET_RELEASE_KEY")))
    client = Client(_env("FLEET_URL"), _env("FLEET_TOKEN"))
    facts = parse_meta(args.meta)
    sha256, length = file_digest(path)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        md = next_metadata(client.metadata(args.name), args.expires_days)
        counter = args.release_counter or release_counter_for(md, args.version)
        custom: dict[str, Any] = dict(facts)
        custom.update(
            version=args.version,
            hardware=args.hardware,
            format=args.format,
            release_counter=counter,
            floor=args.floor,
        )
        target_path = f"models/{args.name}/{args.version}/{args.hardware}/{path.name}"
        md.signed.targets[target_path] = TargetFile(
            length, {"sha256": sha256}, target_path, unrecognized_fields={"custom": custom}
        )
        sign(md, signer)
        try:
            artifact = client.publish(args.name, md, path)
        except CliError as exc:
            if exc.code == "conflict" and attempt < MAX_ATTEMPTS:
                print(f"fleetctl: {exc.detail} (attempt {attempt})", file=sys.stderr)
                time.sleep(0.2 * attempt)
                continue
            raise
        _print(args, artifact, artifact_text(artifact))
        return 0
    return 1  # pragma: no cover - the loop returns or raises


def artifact_text(artifact: dict[str, Any]) -> str:
    """A published variant for people: what, where, and how to check it."""
    return (
        f"published {artifact.get('model')} {artifact.get('version')} for "
        f"{artifact.get('hardware')} ({artifact.get('format')}), release counter "
        f"{artifact.get('release_counter')}\n"
        f"  target  {artifact.get('target_path')}\n"
        f"  sha256  {artifact.get('sha256')}  {artifact.get('length')} bytes"
    )


def cmd_resign(args: argparse.Namespace) -> int:
    signer = signer_load(Path(_env("FLEET_RELEASE_KEY")))
    client = Client(_env("FLEET_URL"), _env("FLEET_TOKEN"))
    current = client.metadata(args.name)
    if current is None:
        raise CliError("malformed", f"{args.name} has nothing published to re-sign")
    md = next_metadata(current, args.expires_days)
    sign(md, signer)
    stored = client.put_metadata(args.name, md)
    text = f"re-signed {args.name}: targets metadata version {stored.get('version')}"
    _print(args, stored, text)
    return 0


# --- rollouts -----------------------------------------------------------------------


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


def identifier(kind: IdentifierKind) -> Callable[[str], str]:
    """An argparse type: the server's rule for ``kind`` (exit status 2 before any request)."""
    return kind.argument()


def parse_artifact_file(text: str) -> str:
    """The artifact's file name becomes the last segment of its target path."""
    identifier(identifiers.FILENAME)(Path(text).name)
    return text


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


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def cmd_rollout_create(args: argparse.Namespace) -> int:
    body = rollout_body(args)
    client = Client(_env("FLEET_URL"), _env("FLEET_TOKEN"))
    rollout = client.post("/api/v1/rollouts/", body)
    if args.start:
        try:
            rollout = client.post(
                f"/api/v1/rollouts/{rollout['id']}/start", {"reason": args.reason}
            )
        except CliError as exc:
            created = f"created {rollout['id']} ({rollout['status']})"
            raise CliError(exc.code, f"{created} but not started: {exc.detail}") from None
    _print(args, rollout, rollout_text(rollout))
    return 0


def cmd_rollout_list(args: argparse.Namespace) -> int:
    client = Client(_env("FLEET_URL"), _env("FLEET_TOKEN"))
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
    _print(args, rollouts[: args.limit], "\n".join([header, *rows]))
    return 0


def cmd_rollout_show(args: argparse.Namespace) -> int:
    client = Client(_env("FLEET_URL"), _env("FLEET_TOKEN"))
    rollout = client.get(f"/api/v1/rollouts/{args.id}/")
    text = rollout_text(rollout)
    if args.audit:
        rollout = {**rollout, "audit": client.get(f"/api/v1/rollouts/{args.id}/audit")}
        text += "\n  audit:\n" + audit_text(rollout["audit"])
    _print(args, rollout, text)
    return 0


def cmd_rollout_action(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if args.action == "promote":
        body["arm"] = args.arm
    if args.action == "schedule" and args.starts_at:
        body["starts_at"] = args.starts_at
    client = Client(_env("FLEET_URL"), _env("FLEET_TOKEN"))
    rollout = client.post(f"/api/v1/rollouts/{args.id}/{args.action}", body)
    _print(args, rollout, rollout_text(rollout))
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


def _output() -> argparse.ArgumentParser:
    """The option every command takes."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--json", action="store_true", help="print JSON (the API's answer) instead of text"
    )
    return output


def _rollout_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    output = _output()
    rollout = sub.add_parser(
        "rollout", help="create and steer rollouts", description="Create and steer rollouts."
    )
    actions = rollout.add_subparsers(dest="rollout_command", required=True)

    create = actions.add_parser("create", parents=[output], help="create a rollout (a draft)")
    create.add_argument(
        "--model",
        required=True,
        type=identifier(identifiers.MODEL_NAME),
        help="the model to roll out, e.g. kws",
    )
    create.add_argument(
        "--strategy", choices=["phased", "ab"], help="default: phased, or ab with --arm"
    )
    create.add_argument(
        "--version", type=identifier(identifiers.VERSION), help="phased: the version to deploy"
    )
    create.add_argument(
        "--arm",
        action="append",
        default=[],
        type=parse_arm,
        metavar="NAME=VERSION[:WEIGHT]",
        help="A/B: an arm, its version and weight (default 1); two to eight, repeatable",
    )
    create.add_argument(
        "--baseline",
        type=identifier(identifiers.ARM_NAME),
        help="A/B: the arm the others are compared with",
    )
    create.add_argument(
        "--stages",
        type=parse_stages,
        metavar="PERCENT:BAKE,...",
        help="percent of the devices and minutes to bake, per stage, e.g. 1:10,10:30,100:0 "
        "(default: one stage of 100 %%)",
    )
    create.add_argument(
        "--group",
        action="append",
        default=[],
        type=identifier(identifiers.GROUP_NAME),
        help="select a static group (repeatable)",
    )
    create.add_argument(
        "--dynamic-group",
        action="append",
        default=[],
        type=identifier(identifiers.GROUP_NAME),
        help="select a dynamic group (repeatable)",
    )
    create.add_argument(
        "--device",
        action="append",
        default=[],
        type=identifier(identifiers.DEVICE_ID),
        help="select a device by id (repeatable)",
    )
    create.add_argument(
        "--tag",
        action="append",
        default=[],
        type=identifier(identifiers.TAG_NAME),
        help="narrow to devices with this tag; several: all of them",
    )
    create.add_argument(
        "--hardware",
        action="append",
        default=[],
        type=identifier(identifiers.HARDWARE),
        help="narrow to devices of this hardware; several: any of them",
    )
    create.add_argument("--all", action="store_true", help="select the whole fleet")
    create.add_argument(
        "--policy",
        type=parse_json_option,
        metavar="JSON|@FILE",
        help="policy fields as a JSON object, or @FILE holding one (docs/rollouts.md)",
    )
    create.add_argument("--rate", type=float, help="policy.rate_per_minute: devices a minute")
    create.add_argument("--burst", type=int, help="policy.rate_burst: devices at once")
    create.add_argument(
        "--on-breach", choices=["pause", "abort"], help="policy.on_breach (default pause)"
    )
    create.add_argument(
        "--max-failure-rate", type=float, help="policy.max_failure_rate (default 0.05)"
    )
    create.add_argument("--description", default="", help="free text shown with the rollout")
    create.add_argument(
        "--schedule", action="store_true", help="create it scheduled instead of a draft"
    )
    create.add_argument(
        "--starts-at", help="ISO 8601 time at which the engine starts it (ota.start_rollout)"
    )
    create.add_argument(
        "--start", action="store_true", help="start it now (needs ota.start_rollout)"
    )
    create.add_argument("--reason", default="", help="with --start: the audit's reason")
    create.set_defaults(func=cmd_rollout_create)

    listing = actions.add_parser("list", parents=[output], help="rollouts, newest first")
    listing.add_argument(
        "--model", type=identifier(identifiers.MODEL_NAME), help="only this model's rollouts"
    )
    listing.add_argument("--status", help="only rollouts in this status, e.g. running")
    listing.add_argument(
        "--limit", type=int, default=50, help="at most this many (default 50, at most 500)"
    )
    listing.set_defaults(func=cmd_rollout_list)

    show = actions.add_parser("show", parents=[output], help="one rollout")
    show.add_argument(
        "id", type=identifier(identifiers.ROLLOUT_ID), help="the rollout's id, e.g. r-12"
    )
    show.add_argument("--audit", action="store_true", help="with its audit trail")
    show.set_defaults(func=cmd_rollout_show)

    for action in ROLLOUT_ACTIONS:
        command = actions.add_parser(action, parents=[output], help=ACTION_HELP[action])
        command.add_argument(
            "id", type=identifier(identifiers.ROLLOUT_ID), help="the rollout's id, e.g. r-12"
        )
        command.add_argument(
            "--reason",
            default="",
            required=action == "abort",
            help="why, for the audit trail" + (" (required)" if action == "abort" else ""),
        )
        if action == "promote":
            command.add_argument(
                "--arm",
                required=True,
                type=identifier(identifiers.ARM_NAME),
                help="the winning arm",
            )
        if action == "schedule":
            command.add_argument("--starts-at", help="ISO 8601: the engine starts it then")
        command.set_defaults(func=cmd_rollout_action, action=action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetctl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    output = _output()
    keygen = sub.add_parser("keygen", parents=[output], help="make a release key pair")
    keygen.add_argument(
        "--out", required=True, help="directory for release.key (secret) and release.pub"
    )
    keygen.set_defaults(func=cmd_keygen)
    publish = sub.add_parser("publish", parents=[output], help="sign and upload a model artifact")
    publish.add_argument("file", type=parse_artifact_file, help="the model file to publish")
    publish.add_argument(
        "--name",
        required=True,
        type=identifier(identifiers.MODEL_NAME),
        help="the registered model, e.g. kws",
    )
    publish.add_argument(
        "--version",
        required=True,
        type=identifier(identifiers.VERSION),
        help="the model's version, e.g. 1.4.0",
    )
    publish.add_argument(
        "--hardware",
        required=True,
        type=identifier(identifiers.HARDWARE),
        help="the hardware it is built for, e.g. esp32s3-int8",
    )
    publish.add_argument(
        "--format",
        required=True,
        type=identifier(identifiers.ARTIFACT_FORMAT),
        help="the file's format, e.g. tflite or onnx",
    )
    publish.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a signed fact about the artifact; VALUE may be JSON (repeatable)",
    )
    publish.add_argument(
        "--release-counter",
        type=int,
        default=0,
        help="the version's release counter (default: its other variants', else one above "
        "every earlier version)",
    )
    publish.add_argument(
        "--floor",
        type=int,
        default=0,
        help="devices that install this never go below this release counter again",
    )
    publish.add_argument(
        "--expires-days",
        type=int,
        default=365,
        help="days until the signed targets metadata expires (default 365)",
    )
    publish.set_defaults(func=cmd_publish)
    resign = sub.add_parser(
        "resign", parents=[output], help="re-sign the model's metadata (key rotation)"
    )
    resign.add_argument(
        "--name",
        required=True,
        type=identifier(identifiers.MODEL_NAME),
        help="the registered model, e.g. kws",
    )
    resign.add_argument(
        "--expires-days",
        type=int,
        default=365,
        help="days until the signed targets metadata expires (default 365)",
    )
    resign.set_defaults(func=cmd_resign)
    _rollout_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except BrokenPipeError:
        return _reader_gone()
    except UsageError as exc:
        parser.error(str(exc))  # exits with status 2
    except CliError as exc:
        print(f"fleetctl: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except KeyFileError as exc:
        print(f"fleetctl: malformed: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        error = transport_error(exc)
        print(f"fleetctl: {error.code}: {error.detail}", file=sys.stderr)
        return 1


def _reader_gone() -> int:
    """Whoever read our output stopped (``fleetctl rollout list | head -1``): end quietly
    with the status of a command killed by SIGPIPE, as other Unix tools do."""
    # Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13  # SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
