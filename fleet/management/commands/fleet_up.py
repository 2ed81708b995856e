"""The quick start: prepare an embedded Fleet OTA and serve it (``deploy/dev/up``)."""

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

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
    help = "Migrate, create dev keys, an operator and a CI token, then run the web server."

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

        base = f"http://{options['addr']}:{options['port']}"
        self.stdout.write(
            self.style.SUCCESS("\nFleet OTA is up (embedded defaults: SQLite, local files).\n")
            + f"""
  Dashboard     {base}/admin/        user: operator   password: {password}
  API docs      {base}/api/docs/
  TUF metadata  {base}/tuf/timestamp.json
  Health        {base}/healthz
  Data dir      {data}

Publish a model as CI would:
  export FLEET_URL={base} FLEET_TOKEN={token} FLEET_RELEASE_KEY={ci_dir / "release.key"}
  .venv/bin/fleetctl publish model.onnx --name kws --version 1.0.0 \\
      --hardware linux-x86_64-fp32 --format onnx
"""
        )
        if options["no_serve"]:
            return
        call_command("runserver", f"{options['addr']}:{options['port']}", use_reloader=False)
