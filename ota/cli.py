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
import os
import sys

import requests

from device_agent.protocol import identifiers
from ota.fleetctl.http import CliError, UsageError, transport_error
from ota.fleetctl.options import identifier, output_options
from ota.fleetctl.publish import cmd_keygen, cmd_publish, cmd_resign, parse_artifact_file
from ota.fleetctl.rollout import (
    ACTION_HELP,
    ROLLOUT_ACTIONS,
    cmd_rollout_action,
    cmd_rollout_create,
    cmd_rollout_list,
    cmd_rollout_show,
    parse_arm,
    parse_json_option,
    parse_stages,
)
from ota.signing import KeyFileError

__all__ = ["build_parser", "main"]


def _rollout_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    output = output_options()
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
    output = output_options()
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
