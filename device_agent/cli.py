"""`fleet-agent`: enroll a device, run the agent, show its state, roll a model back.

    fleet-agent enroll --server URL --token T --device-id ID --hardware HW [--dir DIR]
    fleet-agent configure [--server URL] [--tuf-url URL] [--broker-url URL] [--dir DIR]
    fleet-agent run [--dir DIR] [--simulate-app MODEL [--simulate-app-interval S]]
    fleet-agent status [--dir DIR]
    fleet-agent rollback MODEL [--dir DIR]
    fleet-agent report MODEL NAME=VALUE... [--dir DIR | --socket PATH | --udp-port N]

DIR defaults to $FLEET_AGENT_DIR or /var/lib/fleet-agent. Exit codes: 0 done,
1 refused or failed (the message starts with the error code), 2 usage.
"""

import argparse
import logging
import math
import sys
from pathlib import Path

from device_agent.command_error import CommandError
from device_agent.config import DEFAULT_DIR, ConfigError, Layout
from device_agent.configure import agent_configure
from device_agent.enrollment import EnrollRequest, device_enroll
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.identifiers import DEVICE_ID, HARDWARE, MODEL_NAME
from device_agent.report import sample_report
from device_agent.rollback import model_rollback
from device_agent.run import agent_run
from device_agent.status import agent_status


def cmd_enroll(args: argparse.Namespace) -> int:
    request = EnrollRequest(
        server=args.server,
        token=args.token,
        device_id=args.device_id,
        hardware=args.hardware,
        broker_url=args.broker_url,
        server_ca=args.server_ca,
        force=args.force,
    )
    print(device_enroll(layout=Layout(Path(args.dir)), request=request))
    return 0


def cmd_configure(args: argparse.Namespace) -> int:
    message = agent_configure(
        layout=Layout(Path(args.dir)),
        server=args.server,
        tuf_url=args.tuf_url,
        broker_url=args.broker_url,
    )
    print(message)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    agent_run(
        layout=Layout(Path(args.dir)),
        simulate_app=args.simulate_app,
        simulate_app_interval=args.simulate_app_interval,
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(agent_status(layout=Layout(Path(args.dir))))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    print(model_rollback(layout=Layout(Path(args.dir)), model=args.model))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    message = sample_report(
        layout=Layout(Path(args.dir)),
        model=args.model,
        metrics=args.metrics,
        socket_path=Path(args.socket) if args.socket else None,
        udp_port=args.udp_port,
    )
    print(message)
    return 0


# --- arguments -----------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _metric(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=NUMBER") from None
    return name, number


# --- main --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", default=str(DEFAULT_DIR), help="the agent's directory")
        return p

    enroll = with_dir(sub.add_parser("enroll", help="enroll this device with the control plane"))
    enroll.add_argument("--server", required=True, help="the control plane's base URL")
    enroll.add_argument("--token", required=True, help="a one-time enrollment token")
    enroll.add_argument("--device-id", required=True, type=DEVICE_ID.argument())
    enroll.add_argument("--hardware", required=True, type=HARDWARE.argument())
    enroll.add_argument("--broker-url", help="override the broker URL the server hands out")
    enroll.add_argument("--force", action="store_true", help="enroll again over an old identity")
    enroll.add_argument(
        "--server-ca",
        metavar="PEM",
        help="CA certificates to trust for HTTPS to the control plane (a private CA); "
        "kept in the agent's directory for metadata and downloads too",
    )
    enroll.set_defaults(func=cmd_enroll)
    configure = with_dir(sub.add_parser("configure", help="change the URLs an enrolled agent uses"))
    configure.add_argument("--server", help="the control plane's base URL")
    configure.add_argument("--tuf-url", help="its TUF repository's URL")
    configure.add_argument("--broker-url", help="the broker's URL")
    configure.set_defaults(func=cmd_configure)
    run = with_dir(sub.add_parser("run", help="run the agent"))
    run.add_argument(
        "--simulate-app",
        metavar="MODEL",
        type=MODEL_NAME.argument(),
        help="simulation aid: also act as the device's application, running the installed "
        "MODEL and reporting its measured latency and confidence (device_agent/simapp.py)",
    )
    run.add_argument(
        "--simulate-app-interval",
        metavar="SECONDS",
        type=_positive,
        default=1.0,
        help="how often the simulated application runs the model (default 1.0)",
    )
    run.set_defaults(func=cmd_run)
    with_dir(sub.add_parser("status", help="print the agent's state as JSON")).set_defaults(
        func=cmd_status
    )
    rollback = with_dir(sub.add_parser("rollback", help="go back to a model's previous version"))
    rollback.add_argument("model", type=MODEL_NAME.argument())
    rollback.set_defaults(func=cmd_rollback)
    report = with_dir(sub.add_parser("report", help="hand one metrics sample to the running agent"))
    report.add_argument("model", type=MODEL_NAME.argument())
    report.add_argument("metrics", nargs="+", type=_metric, metavar="NAME=VALUE")
    report.add_argument("--socket", help="the agent's metrics socket (default: from --dir)")
    report.add_argument("--udp-port", type=int, help="send to 127.0.0.1:PORT over UDP instead")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("tuf", "urllib3", "securesystemslib"):
        # -v is for the agent's own decisions; -vv also shows every TUF/HTTP step.
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    try:
        return int(args.func(args))
    except CommandError as exc:
        print(f"fleet-agent: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"fleet-agent: malformed: {exc}", file=sys.stderr)
        return 1
    except ProtocolError as exc:
        print(f"fleet-agent: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
