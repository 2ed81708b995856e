"""The quick start: prepare an embedded Fleet OTA and serve it (``deploy/dev/up``)."""

import os
import secrets
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.auth import ROLES
from fleet.devserver import Child, Exit, Supervisor, describe, first_free_port, port_free
from fleet.enrollment import enrollment_token_create
from fleet.management.commands.broker import mosquitto_binary
from fleet.models import Device
from fleet.sample import FIRST, SECOND
from fleet.services import api_token_create, ci_user_get_or_create
from ota.models import Model
from ota.repository import model_register, signer_for
from ota.signing import keypair_generate, signer_load


def _secret_file(path: Path, make: Any) -> str:
    """A value generated once and kept (mode 0600) so repeated starts print the same one."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = str(make())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


SIM_HARDWARE = "linux-x86_64-fp32"


ESP32_HARDWARE = "esp32s3-int8"
ESP32_PACKAGES = "cmake gcc libmbedtls-dev libmosquitto-dev libcurl4-openssl-dev"


def _esp32_build(data: Path) -> tuple[Path | None, str]:
    """The ESP32 client's host build (device_agent/esp32/), built under the data
    directory: (the fleet-ota-posix binary, "") or (None, why it cannot be built)."""
    if shutil.which("cmake") is None:
        return None, "cmake is not installed"
    build = data / "esp32-build"
    source = Path(settings.BASE_DIR) / "device_agent" / "esp32"
    for args in (
        ["cmake", "-S", str(source), "-B", str(build)],
        ["cmake", "--build", str(build), "--target", "fleet-ota-posix", "-j", "2"],
    ):
        done = subprocess.run(  # noqa: S603 - cmake on our own sources
            args, capture_output=True, text=True, timeout=900, check=False
        )
        if done.returncode != 0:
            output = done.stdout + done.stderr
            lines = [x.strip() for x in output.splitlines() if "Could not find" in x or "rror" in x]
            return None, lines[0] if lines else f"{' '.join(args[:2])} failed"
    return build / "fleet-ota-posix", ""


def _esp32_device(data: Path, binary: Path, index: int, base: str) -> tuple[str, Path]:
    """Enroll a simulated ESP32 device once, with the C client's own key and CSR."""
    device_id = f"esp32-{index:03d}"
    directory = data / "devices" / device_id
    if (directory / "cert.rec").exists():
        return device_id, directory
    if Device.objects.filter(device_id=device_id).exists():
        raise CommandError(
            f"{device_id} is enrolled but {directory} is gone: delete {data} to start afresh"
        )
    _, token = enrollment_token_create(by=None, hours=1, hardware=ESP32_HARDWARE)
    subprocess.run(  # noqa: S603 - the C client we just built
        [str(binary), "enroll", "--dir", str(directory), "--server", base, "--token", token]
        + ["--device-id", device_id, "--hardware", ESP32_HARDWARE],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return device_id, directory


def _venv_bin(root: Path) -> str:
    """How the printed commands name this environment's scripts, run from the checkout."""
    scripts = Path(sys.executable).parent
    return ".venv/bin" if scripts == root / ".venv" / "bin" else str(scripts)


def _queue_text(broker_url: str, data: Path) -> str:
    """Where the worker's queue is, for people: the embedded one is a directory."""
    if broker_url.startswith("filesystem://"):
        return f"embedded queue in {data / 'celery'}/"
    return "queue at " + broker_url.split("@")[-1]  # no credentials on the screen


def _mqtt_port(data: Path, preferred: int) -> int:
    """The broker port of the last run when it is still free (enrolled agents remember it)."""
    remembered = data / "mqtt" / "port"
    if remembered.exists():
        old = int(remembered.read_text())
        if port_free(old):
            return old
    port = first_free_port(preferred)
    remembered.parent.mkdir(parents=True, exist_ok=True)
    remembered.write_text(str(port))
    return port


def _simulated_device(data: Path, index: int, base: str, mqtt_port: int) -> Path:
    """Enroll a simulated device once, through the real API, as a real agent would."""
    device_id = f"sim-{index:03d}"
    directory = data / "devices" / device_id
    broker = f"mqtt://127.0.0.1:{mqtt_port}"
    agent = str(Path(sys.executable).parent / "fleet-agent")
    # The agent's settings file (docs/operator-guide.md, "On the device"); the agent's own
    # CLI rewrites it, the server never imports the agent's modules.
    if (directory / "config.json").exists():
        subprocess.run(  # noqa: S603 - our own console script
            [
                agent,
                "configure",
                "--dir",
                str(directory),
                "--server",
                base,
                "--tuf-url",
                f"{base}/tuf/",
                "--broker-url",
                broker,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return directory
    if Device.objects.filter(device_id=device_id).exists():
        raise CommandError(
            f"{device_id} is enrolled but {directory} is gone: delete {data} to start afresh"
        )
    _, token = enrollment_token_create(by=None, hours=1, hardware=SIM_HARDWARE)
    subprocess.run(  # noqa: S603 - our own console script
        [
            agent,
            "enroll",
            "--dir",
            str(directory),
            "--server",
            base,
            "--token",
            token,
            "--device-id",
            device_id,
            "--hardware",
            SIM_HARDWARE,
            "--broker-url",
            broker,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory


class Command(BaseCommand):
    help = (
        "Migrate, create dev keys, an operator and a CI token, then run the broker, the "
        "bridge, a Celery worker with beat, the web server and simulated devices, and seed "
        "a sample model with a phased rollout."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default=os.environ.get("FLEET_ADDR", "127.0.0.1"))
        parser.add_argument("--port", default=os.environ.get("FLEET_PORT", "8000"))
        parser.add_argument("--no-serve", action="store_true", help="prepare only")
        parser.add_argument(
            "--devices",
            type=int,
            default=int(os.environ.get("FLEET_DEVICES", "3")),
            help="simulated devices, each a real fleet-agent process (default 3)",
        )
        parser.add_argument(
            "--esp32-devices",
            type=int,
            default=int(os.environ.get("FLEET_ESP32_DEVICES", "0")),
            help="simulated ESP32 devices: the C client's host build (default 0; needs "
            f"a C compiler and {ESP32_PACKAGES})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Everything the quick start and its children write under the data directory
        # (keys, logs, queue, device state, the CI token) is for this user only.
        os.umask(0o077)
        data = Path(settings.FLEET_DATA_DIR)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("tuf_init", if_missing=True)

        password = _secret_file(data / "operator-password", lambda: secrets.token_urlsafe(12))
        user_model = get_user_model()
        if not user_model.objects.filter(username="operator").exists():
            user_model.objects.create_superuser("operator", "operator@localhost", password)

        ci_dir = data / "ci"
        if not (ci_dir / "release.key").exists():
            keypair_generate(ci_dir / "release.key", ci_dir / "release.pub")
        if not Model.objects.filter(name="kws").exists():
            model_register(
                name="kws",
                keys=[signer_load(ci_dir / "release.key").public_key],
                threshold=1,
                description="keyword spotting (quick-start sample)",
                targets_signer=signer_for("targets"),
            )
        token = _secret_file(
            ci_dir / "token",
            lambda: api_token_create(
                user=ci_user_get_or_create(username="ci"),
                name="quickstart",
                scopes=ROLES["ci"],  # publish kws, open draft rollouts of it
                model_names=["kws"],
            )[1],
        )

        port = int(options["port"])
        if not options["no_serve"] and not port_free(port):
            raise CommandError(f"port {port} is in use: set FLEET_PORT or pass --port")
        mqtt_port = _mqtt_port(data, int(os.environ.get("FLEET_MQTT_PORT", "1883")))
        # deploy/prometheus/prometheus.yml scrapes the bridge on 9102.
        bridge_metrics_port = first_free_port(
            int(os.environ.get("FLEET_BRIDGE_METRICS_PORT", "9102"))
        )
        engine = "mosquitto" if mosquitto_binary() else "amqtt"
        base = f"http://{options['addr']}:{port}"
        env = {
            **os.environ,
            "FLEET_PUBLIC_URL": base,
            "FLEET_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "FLEET_MQTT_BRIDGE_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            # A real Celery worker and beat on the embedded queue (a directory under
            # FLEET_DATA_DIR, fleet/settings.py) unless a broker is given. The transport
            # ignores the host, but without one kombu warns in every process that queues.
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL") or "filesystem://localhost/",
            "PYTHONUNBUFFERED": "1",
        }
        root = settings.BASE_DIR
        venv = _venv_bin(root)
        esp32_binary: Path | None = None
        n_esp32 = max(0, int(options["esp32_devices"]))
        if n_esp32:
            esp32_binary, why = _esp32_build(data)
            esp32_line = (
                f"{n_esp32} simulated ESP32 devices (the C client's host build, "
                f"{ESP32_HARDWARE}), in {data / 'devices'}/esp32-*/"
                if esp32_binary
                else f"none: FLEET_ESP32_DEVICES={n_esp32} asks for them, but the C client "
                f"cannot be built here ({why}; apt-get install {ESP32_PACKAGES})"
            )
        else:
            esp32_line = "none (FLEET_ESP32_DEVICES=N runs N, built from device_agent/esp32/)"
        # The printed manage.py command must find this run's database.
        data_env = f"FLEET_DATA_DIR={data} " if os.environ.get("FLEET_DATA_DIR") else ""
        state = "prepared (--no-serve: nothing runs)" if options["no_serve"] else "up"
        banner = (
            self.style.SUCCESS(
                f"\nFleet OTA is {state} (embedded defaults: SQLite, local files).\n"
            )
            + f"""
  Dashboard     {base}/admin/        user: operator   password: {password}
  API docs      {base}/api/docs/     (log in to the dashboard first)
  TUF metadata  {base}/tuf/timestamp.json
  Health        {base}/healthz
  MQTT broker   mqtt://127.0.0.1:{mqtt_port}  ({engine}, plain, loopback only)
                production uses TLS + client certificates: deploy/mosquitto/
  Metrics       {base}/metrics  (loopback only)
                bridge: http://127.0.0.1:{bridge_metrics_port}/metrics
                (deploy/prometheus/prometheus.yml scrapes both)
  Worker        Celery worker + beat, {_queue_text(env["CELERY_BROKER_URL"], data)}
  Devices       {options["devices"]} simulated fleet-agent processes, in {data / "devices"}/
  ESP32         {esp32_line}
  Logs          {data / "logs"}/
  Ports         web {port} (FLEET_PORT or --port), MQTT {mqtt_port} (FLEET_MQTT_PORT),
                bridge metrics {bridge_metrics_port} (FLEET_BRIDGE_METRICS_PORT)

In another shell, from {root}:

Publish a model as CI would (CI's token: publish and draft rollouts):
  export FLEET_URL={base} FLEET_TOKEN={token} FLEET_RELEASE_KEY={ci_dir / "release.key"}
  {venv}/fleetctl publish deploy/dev/sample-models/kws-1.1.0.onnx --name kws \\
      --version 1.2.0 --hardware linux-x86_64-fp32 --format onnx

Steer rollouts as an operator (a token of your own; {venv}/fleetctl --help for more):
  export FLEET_URL={base}
  export FLEET_TOKEN=$({data_env}{venv}/python manage.py api_token_create \\
      --user operator --role operator --name cli)
  {venv}/fleetctl rollout list

Stop with Ctrl-C.
"""
        )
        if options["no_serve"]:
            self.stdout.write(banner)
            return
        supervisor = Supervisor(data / "logs", env)
        supervisor.manage("broker", "broker", "--port", str(mqtt_port), ready_port=mqtt_port)
        bridge_args = [
            "bridge",
            "--url",
            f"mqtt://127.0.0.1:{mqtt_port}",
            "--metrics-port",
            str(bridge_metrics_port),
        ]
        if engine == "amqtt":  # no $share, MQTT 3.1.1 only
            bridge_args += ["--no-share", "--protocol", "3.1.1"]
        supervisor.manage("bridge", *bridge_args)
        supervisor.start(
            Child(
                "worker",
                [
                    str(Path(sys.executable).parent / "celery"),
                    "-A",
                    "fleet",
                    "worker",
                    "--beat",
                    "--schedule",
                    str(data / "celerybeat-schedule"),
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "INFO",
                ],
            )
        )
        supervisor.manage(
            "web", "runserver", f"{options['addr']}:{port}", "--noreload", ready_port=port
        )
        for index in range(1, options["devices"] + 1):
            device_dir = _simulated_device(data, index, base, mqtt_port)
            supervisor.start(
                Child(
                    f"device-{index}",
                    [
                        str(Path(sys.executable).parent / "fleet-agent"),
                        "run",
                        "--dir",
                        str(device_dir),
                        "--simulate-app",
                        "kws",
                    ],
                )
            )
        for index in range(1, n_esp32 + 1):
            if esp32_binary is None:
                break
            device_id, device_dir = _esp32_device(data, esp32_binary, index, base)
            supervisor.start(
                Child(
                    f"esp32-{index}",
                    [str(esp32_binary), "--dir", str(device_dir), "--device-id", device_id]
                    + ["--hardware", ESP32_HARDWARE, "--broker", "127.0.0.1"]
                    + ["--port", str(mqtt_port), "--selftest", 'test -s "$FLEET_MODEL_PATH"'],
                )
            )
        self.stdout.write(banner)
        self.stdout.flush()
        devices = [f"sim-{index:03d}" for index in range(1, options["devices"] + 1)]
        threading.Thread(
            target=self._sample,
            kwargs={
                "ci_env": {
                    **env,
                    "FLEET_URL": base,
                    "FLEET_TOKEN": token,
                    "FLEET_RELEASE_KEY": str(ci_dir / "release.key"),
                },
                "devices": devices,
                "base": base,
                "venv": venv,
            },
            daemon=True,
        ).start()

        def died(child: Child, exited: Exit) -> None:
            self.stderr.write(
                self.style.ERROR(f"{describe(child, exited)}: see {data / 'logs'}/{child.name}.log")
            )

        supervisor.wait(died)

    def _sample(self, *, ci_env: dict[str, str], devices: list[str], base: str, venv: str) -> None:
        done = subprocess.run(  # noqa: S603 - our own command
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "sample_seed", *devices],
            env=ci_env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            self.stderr.write(
                self.style.WARNING(f"The sample rollout was not seeded: {done.stderr[-2000:]}")
            )
            return
        rollout_id = done.stdout.strip()
        if rollout_id:
            self.stdout.write(
                f"Sample: kws {FIRST} runs on every simulated device; a phased rollout of "
                f"kws {SECOND} ({rollout_id}) is running:\n  {base}/admin/ota/rollout/\n"
                f"  {venv}/fleetctl rollout show {rollout_id} --audit   # the operator's token\n"
            )
            self.stdout.flush()
