"""Re-sign snapshot and timestamp now (what the beat task does on a schedule)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ota.repository import repository_refresh


class Command(BaseCommand):
    help = "Re-sign TUF snapshot/timestamp if they are close to expiry (or always with --force)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        changed = repository_refresh(force=options["force"])
        self.stdout.write(f"re-signed: {', '.join(changed) or 'nothing needed'}")
