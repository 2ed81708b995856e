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
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import signal
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_agent import AGENT_VERSION
from device_agent.config import DEFAULT_DIR, AgentConfig, ConfigError, Layout
from device_agent.delivery import EventDelivery
from device_agent.journal import Journal
from device_agent.metrics_client import encode_sample, send_datagram
from device_agent.mqtt import MqttLink, TlsFiles, parse_broker_url
from device_agent.mqtt_adapters import MqttPublisher, MqttTelemetryOut, event_delivery
from device_agent.protocol.envelope import load_public_key_pem
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.fsutil import write_atomic
from device_agent.protocol.identifiers import DEVICE_ID, HARDWARE, MODEL_NAME
from device_agent.protocol.messages import Phase
from device_agent.slots import ModelSlots
from device_agent.state import Status
from device_agent.testhooks import agent_clock
from device_agent.watchdog import systemd_watch

log = logging.getLogger("device_agent")
ENROLL_TIMEOUT_S = 60


class CliError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@contextlib.contextmanager
def agent_lock(layout: Layout) -> Iterator[None]:
    """Exclusive use of the agent directory (one `run`, or one offline `rollback`)."""
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CliError("forbidden", f"another fleet-agent is using {layout.root}") from None
        yield
    finally:
        os.close(fd)


# --- enroll ------------------------------------------------------------------------


def _tls_context(cafile: Path | None) -> ssl.SSLContext:
    """Certificate and host name checked, against `cafile` or else the system's CAs."""
    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise CliError("malformed", f"cannot use {cafile} as CA certificates: {exc}") from None


def _post_json(url: str, body: dict[str, Any], *, cafile: Path | None = None) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise CliError("malformed", f"{url} is not an http(s) URL")
    context = _tls_context(cafile)
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": f"fleet-agent/{AGENT_VERSION}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 - scheme checked above
            request, timeout=ENROLL_TIMEOUT_S, context=context
        ) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            raise CliError(str(error["code"]), str(error["detail"])) from None
        except (ValueError, KeyError, TypeError):
            raise CliError("malformed", f"HTTP {exc.code} from {url}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError("download_failed", f"cannot reach {url}: {exc}") from None
    if not isinstance(data, dict):
        raise CliError("malformed", "the enrollment answer is not a JSON object")
    return data


def _server_ca(path: str | None) -> bytes | None:
    """The --server-ca file's certificates (checked to be PEM certificates), or None."""
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
        certificates = x509.load_pem_x509_certificates(data)
    except OSError as exc:
        raise CliError("malformed", f"cannot read --server-ca {path}: {exc}") from None
    except ValueError:
        raise CliError("malformed", f"--server-ca {path} holds no PEM certificate") from None
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def cmd_enroll(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.dir))
    if (layout.root / "config.json").exists() and not args.force:
        raise CliError("conflict", f"{layout.root} is already enrolled (use --force to redo)")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, args.device_id)]))
        .sign(key, hashes.SHA256())
    )
    server = args.server.rstrip("/")
    server_ca = _server_ca(args.server_ca)
    answer = _post_json(
        f"{server}/api/v1/enroll",
        {
            "token": args.token,
            "device_id": args.device_id,
            "hardware": args.hardware,
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "agent_version": AGENT_VERSION,
        },
        cafile=Path(args.server_ca) if args.server_ca else None,
    )
    try:
        certificate = str(answer["certificate"]).encode()
        ca_certificate = str(answer["ca_certificate"]).encode()
        director = str(answer["director_public_key"]).encode()
        tuf_root = answer["tuf_root"]
        tuf_url = str(answer["tuf_url"])
        broker_url = str(answer["broker_url"])
    except KeyError as exc:
        raise CliError("malformed", f"the enrollment answer lacks {exc}") from None
    cert = x509.load_pem_x509_certificate(certificate)
    if cert.public_key() != key.public_key():
        raise CliError("malformed", "the issued certificate is not for our key")
    load_public_key_pem(director)
    if not isinstance(tuf_root, dict) or tuf_root.get("signed", {}).get("_type") != "root":
        raise CliError("malformed", "tuf_root is not TUF root metadata")
    config = AgentConfig(
        device_id=args.device_id,
        hardware=args.hardware,
        server_url=server,
        tuf_url=tuf_url,
        broker_url=args.broker_url or broker_url,
    )
    layout.make_dirs()
    if server_ca is not None:
        write_atomic(layout.server_ca, server_ca, mode=0o600)
    else:  # enrolled again (--force) without one: back to the system's CAs
        layout.server_ca.unlink(missing_ok=True)
    write_atomic(layout.trust_root, json.dumps(tuf_root).encode(), mode=0o600)
    write_atomic(layout.director_key, director, mode=0o600)
    write_atomic(layout.ca, ca_certificate, mode=0o600)
    write_atomic(layout.cert, certificate, mode=0o600)
    write_atomic(
        layout.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    config.save(layout.root)
    print(f"enrolled {args.device_id} ({args.hardware}) into {layout.root}")
    return 0


def cmd_configure(args: argparse.Namespace) -> int:
    """Point an enrolled agent at other URLs of the same control plane (a moved server,
    the dev quick start's ports); the identity stays. Read at the next `run`."""
    layout = Layout(Path(args.dir))
    config = AgentConfig.load(layout.root)
    wanted = {
        "server_url": args.server.rstrip("/") if args.server else None,
        "tuf_url": args.tuf_url,
        "broker_url": args.broker_url,
    }
    changes = {
        name: value
        for name, value in wanted.items()
        if value is not None and getattr(config, name) != value
    }
    if args.broker_url is not None:
        try:
            parse_broker_url(args.broker_url)
        except ValueError as exc:
            raise CliError("malformed", str(exc)) from None
    for option, url in (("--server", args.server), ("--tuf-url", args.tuf_url)):
        if url is not None and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise CliError("malformed", f"{option} {url!r} is not an http(s) URL")
    if not changes:
        print(f"{layout.root}: unchanged")
        return 0
    with agent_lock(layout):  # not under a running agent, which would not see it
        replace(config, **changes).save(layout.root)
    print(f"{layout.root}: set {', '.join(sorted(changes))}")
    return 0


# --- run ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from device_agent.download import Interrupted  # lazy: tuf is heavy
    from device_agent.metrics_server import MetricsService
    from device_agent.runner import PUBLISH_STATE, Runner
    from device_agent.simapp import SimulatedApp

    layout = Layout(Path(args.dir))
    config = AgentConfig.load(layout.root)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with agent_lock(layout):
        runner: Runner | None = None

        def on_desired(payload: bytes) -> None:
            if runner is not None:
                runner.offer_desired(payload)

        delivery: EventDelivery | None = None
        metrics: MetricsService | None = None

        def on_connected() -> None:
            if delivery is not None:
                delivery.on_connected()
            if metrics is not None:
                metrics.on_connected()
            if runner is not None:
                runner.inbox.put(PUBLISH_STATE)

        def on_acks(payload: bytes) -> None:
            if delivery is not None:
                delivery.on_acks(payload)
            if metrics is not None:
                metrics.on_acks(payload)

        link = MqttLink(
            broker_url=config.broker_url,
            device_id=config.device_id,
            tls=TlsFiles(ca=layout.ca, cert=layout.cert, key=layout.key),
            on_desired=on_desired,
            on_connected=on_connected,
            on_acks=on_acks,
            protocol=config.mqtt_protocol,
        )
        layout.make_dirs()
        delivery = event_delivery(layout, link)
        clock = agent_clock()
        runner = Runner(
            layout.root, config, publisher=MqttPublisher(link, delivery), clock=clock, stop=stop
        )
        metrics = MetricsService(
            layout=layout,
            config=config,
            tags=lambda: runner.telemetry_tags if runner is not None else {},
            out=MqttTelemetryOut(link, config.telemetry_qos),
            clock=clock,
        )
        log.info("fleet-agent %s for %s starting", AGENT_VERSION, config.device_id)
        link.start()
        delivery.start()
        metrics.start()
        if args.simulate_app:
            SimulatedApp(
                models_dir=layout.models,
                model=args.simulate_app,
                interval_s=args.simulate_app_interval,
                socket_path=metrics.socket_path,
                udp_port=None if metrics.socket_path else config.metrics_udp_port,
                stop=stop,
            ).start()
        try:
            runner.recover()
            systemd_watch(runner, stop)
            runner.run()
        except Interrupted:
            log.info("stopped during a download; it resumes on the next start")
        except Exception:
            log.exception("the agent stopped on an error")
            raise
        finally:
            stop.set()
            metrics.close(timeout=2.0)
            delivery.stop()
            link.stop()
    return 0


# --- status / rollback -------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from device_agent.store import AgentStore

    layout = Layout(Path(args.dir))
    config = AgentConfig.load(layout.root)
    store = AgentStore.load(layout.store)
    state = Journal(layout.journal).load()
    try:
        telemetry = json.loads(layout.metrics_stats.read_bytes())
    except (OSError, ValueError):
        telemetry = None
    models = {}
    for name, record in store.models.items():
        models[name] = {
            **record.to_dict(),
            "current": str(ModelSlots(layout.models, name).current() or ""),
        }
    print(
        json.dumps(
            {
                "device_id": config.device_id,
                "hardware": config.hardware,
                "agent_version": AGENT_VERSION,
                "update": state.to_dict(),
                "last_seq": store.last_seq,
                "models": models,
                "telemetry": telemetry,
            },
            indent=2,
        )
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from device_agent.store import AgentStore

    layout = Layout(Path(args.dir))
    AgentConfig.load(layout.root)
    with agent_lock(layout):
        if Journal(layout.journal).load().status is not Status.IDLE:
            raise CliError("conflict", "an update is in progress; let the agent finish it first")
        store = AgentStore.load(layout.store)
        record = store.models.get(args.model)
        if record is None or record.installed is None:
            raise CliError("unknown_model", f"{args.model} is not installed")
        previous = record.previous
        if previous is None:
            raise CliError("not_found", f"{args.model} has no previous version to go back to")
        if previous.release_counter < record.floor:
            raise CliError(
                "downgrade_refused",
                f"{previous.version} (release {previous.release_counter}) is below the floor "
                f"{record.floor}",
            )
        slots = ModelSlots(layout.models, args.model)
        path = slots.file(previous.slot, previous.filename)
        digest = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while data := f.read(1024 * 1024):
                    digest.update(data)
        except FileNotFoundError:
            raise CliError("not_found", f"{path} is missing") from None
        if digest.hexdigest() != previous.sha256:
            raise CliError("hash_mismatch", f"{path} no longer has its recorded sha256")
        slots.swap(previous.slot)
        record.installed, record.previous = previous, record.installed
        record.status = Phase.ROLLED_BACK
        store.save()
    print(f"{args.model}: now {previous.version} (slot {previous.slot})")
    return 0


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


def cmd_report(args: argparse.Namespace) -> int:
    """Send one sample the way an application's report() does (for scripts and checks)."""
    socket_path: Path | None = Path(args.socket) if args.socket else None
    udp_port: int | None = args.udp_port
    if socket_path is None and udp_port is None:
        layout = Layout(Path(args.dir))
        try:
            config = AgentConfig.load(layout.root)
        except (ConfigError, OSError):  # config.json is the agent's (0600): the default
            socket_path = layout.metrics_socket
        else:
            socket_path = config.metrics_socket_path(layout)
            udp_port = config.metrics_udp_port
    try:
        data = encode_sample(args.model, dict(args.metrics))
    except (TypeError, ValueError) as exc:
        raise CliError("malformed", str(exc)) from None
    where = f"udp port {udp_port}" if socket_path is None else str(socket_path)
    try:
        send_datagram(data, socket_path=socket_path, udp_port=udp_port)
    except OSError as exc:
        raise CliError("unavailable", f"the agent's metrics socket {where}: {exc}") from None
    print(f"sent {len(args.metrics)} metrics of {args.model} to {where}")
    return 0


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
    except CliError as exc:
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
