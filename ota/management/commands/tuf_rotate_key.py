"""Rotate the key of a top-level TUF role through a new, cross-signed root version."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.errors import ServiceError
from ota.repository import ONLINE_ROLES, TOP_LEVEL_ROLES, key_path, signer_for, top_level_key_rotate
from ota.signing import KeyFileError, keypair_generate, signer_load


class Command(BaseCommand):
    help = "Replace the key of ROLE (root, targets, snapshot or timestamp)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("role", choices=TOP_LEVEL_ROLES)
        parser.add_argument(
            "--new-key",
            type=Path,
            help="new private key file (generated here if it does not exist)",
        )
        parser.add_argument(
            "--root-key",
            type=Path,
            action="append",
            help="current root private key(s); default: keys directory",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        role: str = options["role"]
        installed = key_path(role)
        new_path: Path = options["new_key"] or installed.with_suffix(".pem.new")
        try:
            if not new_path.exists():
                keypair_generate(new_path)
            new_signer = signer_load(new_path)
            root_signers = [signer_for("root", p) for p in (options["root_key"] or [None])]
            version = top_level_key_rotate(
                role=role, new_signer=new_signer, root_signers=root_signers
            )
        except KeyFileError as exc:
            raise CommandError(str(exc)) from None
        except ServiceError as exc:
            raise CommandError(f"{exc.code}: {exc.detail}") from None
        if role in ONLINE_ROLES or options["new_key"] is None:
            # Online keys live in the keys directory; an offline key given with
            # --new-key stays where the operator keeps it.
            self._install(installed, new_path)
        self.stdout.write(self.style.SUCCESS(f"Rotated the {role} key; root is now v{version}."))

    def _install(self, installed: Path, new_path: Path) -> None:
        if installed.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            installed.rename(installed.with_suffix(f".pem.retired-{stamp}"))
        new_path.rename(installed)
