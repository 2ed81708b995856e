"""List stored rows whose identifiers break today's rules (docs/api.md, Identifiers)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from fleet.identifier_report import identifier_violations


class Command(BaseCommand):
    help = (
        "List devices, groups, tags, enrollment tokens, models and artifacts whose "
        "identifiers are outside their alphabet. Changes nothing; exit status 1 when "
        "any is found."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        found = 0
        for violation in identifier_violations():
            found += 1
            self.stdout.write(
                f"{violation.table} pk={violation.pk} {violation.field}={violation.value!r}: "
                f"not a valid {violation.kind.name} ({violation.kind.rule()})"
            )
        if found:
            raise CommandError(
                f"{found} stored identifier(s) outside their alphabet: rename them in the "
                "admin (or recreate them) so the API, fleetctl and devices can address them"
            )
        self.stdout.write(self.style.SUCCESS("Every stored identifier follows its rule."))
