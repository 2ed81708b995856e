"""Register a model name and its CI release public key(s): a new TUF delegation."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.errors import ServiceError
from ota.repository import model_register, signer_for
from ota.signing import KeyFileError, public_key_from_pem


class Command(BaseCommand):
    help = "Register MODEL with release public keys (PEM files made by `fleetctl keygen`)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument(
            "--release-key",
            action="append",
            required=True,
            type=Path,
            help="a release public key (.pub); repeat for several",
        )
        parser.add_argument("--threshold", type=int, default=1)
        parser.add_argument("--description", default="")
        parser.add_argument(
            "--targets-key",
            type=Path,
            help="the (offline) targets private key; default: keys directory",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            keys = [public_key_from_pem(p.read_bytes()) for p in options["release_key"]]
            model = model_register(
                name=options["name"],
                keys=keys,
                threshold=options["threshold"],
                description=options["description"],
                targets_signer=signer_for("targets", options["targets_key"]),
            )
        except (KeyFileError, OSError) as exc:
            raise CommandError(str(exc)) from None
        except ServiceError as exc:
            raise CommandError(f"{exc.code}: {exc.detail}") from None
        ids = ", ".join(k.keyid for k in keys)
        self.stdout.write(self.style.SUCCESS(f"Registered model {model.name} with key(s) {ids}."))
