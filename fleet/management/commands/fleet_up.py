"""The quick start: prepare an embedded Fleet OTA and serve it (``deploy/dev/up``)."""

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.devserver import Child, Supervisor, first_free_port, port_free
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


class Command(BaseCommand):
    help = (
        "Migrate, create dev keys, an operator and a CI token, then run the broker and the "
        "web server (and, as they land, bridge, worker and simulated devices)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default=os.environ.get("FLEET_ADDR", "127.0.0.1"))
        parser.add_argument("--port", default=os.environ.get("FLEET_PORT", "8000"))
        parser.add_argument("--no-serve", action="store_true", help="prepare only")

    def handle(self, *args: Any, **options: Any) -> None:
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
            lambda: api_token_create(user=ci_user_get_or_create(username="ci"), name="quickstart")[
                1
            ],
        )

        port = int(options["port"])
        if not options["no_serve"] and not port_free(port):
            raise CommandError(f"port {port} is in use: set FLEET_PORT or pass --port")
        mqtt_port = first_free_port(int(os.environ.get("FLEET_MQTT_PORT", "1883")))
        base = f"http://{options['addr']}:{port}"
        env = {
            **os.environ,
            "FLEET_PUBLIC_URL": base,
            "FLEET_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "FLEET_MQTT_BRIDGE_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "PYTHONUNBUFFERED": "1",
        }
        banner = (
            self.style.SUCCESS("\nFleet OTA is up (embedded defaults: SQLite, local files).\n")
            + f"""
  Dashboard     {base}/admin/        user: operator   password: {password}
  API docs      {base}/api/docs/
  TUF metadata  {base}/tuf/timestamp.json
  Health        {base}/healthz
  MQTT broker   mqtt://127.0.0.1:{mqtt_port}  (plain, loopback only; production: deploy/mosquitto/)
  Logs          {data / "logs"}/

Publish a model as CI would:
  export FLEET_URL={base} FLEET_TOKEN={token} FLEET_RELEASE_KEY={ci_dir / "release.key"}
  .venv/bin/fleetctl publish model.onnx --name kws --version 1.0.0 \\
      --hardware linux-x86_64-fp32 --format onnx

Stop with Ctrl-C.
"""
        )
        if options["no_serve"]:
            self.stdout.write(banner)
            return
        supervisor = Supervisor(data / "logs", env)
        supervisor.manage("broker", "broker", "--port", str(mqtt_port), ready_port=mqtt_port)
        supervisor.manage(
            "web", "runserver", f"{options['addr']}:{port}", "--noreload", ready_port=port
        )
        self.stdout.write(banner)
        self.stdout.flush()

        def died(child: Child, code: int) -> None:
            self.stderr.write(
                self.style.ERROR(f"{child.name} exited with {code}: see {data / 'logs'}/")
            )

        supervisor.wait(died)
