"""Initialise the TUF image repository (root, targets, snapshot, timestamp v1)."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.errors import ServiceError
from ota.repository import repository_initialize, repository_is_initialized

WARNING = """
!!! Generated TUF {roles} key(s) in {keys_dir}.
!!! This is fine for development. In production the root and targets keys belong
!!! OFFLINE (docs/security.md): whoever holds them can make devices trust any model.
"""


class Command(BaseCommand):
    help = "Create version 1 of the TUF top-level metadata, generating missing dev keys."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-generate", action="store_true", help="refuse to generate missing key files"
        )
        parser.add_argument(
            "--if-missing", action="store_true", help="do nothing if already initialised"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["if_missing"] and repository_is_initialized():
            return
        try:
            made = repository_initialize(generate_missing_keys=not options["no_generate"])
        except ServiceError as exc:
            raise CommandError(exc.detail) from None
        if made:
            self.stderr.write(
                self.style.WARNING(
                    WARNING.format(roles="/".join(made), keys_dir=settings.FLEET_KEYS_DIR)
                )
            )
        self.stdout.write(self.style.SUCCESS("TUF repository initialised."))
