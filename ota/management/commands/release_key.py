"""Add or revoke a model's release key (the two halves of a key rotation)."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.errors import ServiceError
from ota.models import Model
from ota.repository import release_key_add, release_key_revoke, signer_for
from ota.signing import KeyFileError, public_key_from_pem


class Command(BaseCommand):
    help = (
        "Rotate a release key: `add MODEL NEW.pub`, have CI re-sign with `fleetctl resign`, "
        "then `revoke KEYID`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add")
        add.add_argument("model")
        add.add_argument("public_key", type=Path)
        revoke = sub.add_parser("revoke")
        revoke.add_argument("keyid")
        revoke.add_argument("--reason", default="revoked by operator")
        for p in (add, revoke):
            p.add_argument(
                "--targets-key",
                type=Path,
                help="the (offline) targets private key; default: keys directory",
            )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            signer = signer_for("targets", options["targets_key"])
            if options["action"] == "add":
                model = Model.objects.filter(name=options["model"]).first()
                if model is None:
                    raise CommandError(f"unknown model {options['model']!r}")
                key = public_key_from_pem(options["public_key"].read_bytes())
                release_key_add(model=model, key=key, targets_signer=signer)
                self.stdout.write(f"Added release key {key.keyid} to {model.name}.")
            else:
                release_key_revoke(
                    keyid=options["keyid"], reason=options["reason"], targets_signer=signer
                )
                self.stdout.write(f"Revoked release key {options['keyid']}.")
        except (KeyFileError, OSError) as exc:
            raise CommandError(str(exc)) from None
        except ServiceError as exc:
            raise CommandError(f"{exc.code}: {exc.detail}") from None
