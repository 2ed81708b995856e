"""Create an API token for CI (``fleetctl``) or a script."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from fleet.services import api_token_create, ci_user_get_or_create


class Command(BaseCommand):
    help = "Create a CI service account (if needed) and an API token for it; prints the token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", default="ci", help="service account name (default: ci)")
        parser.add_argument("--name", default="ci", help="a label for the token")

    def handle(self, *args: Any, **options: Any) -> None:
        user = ci_user_get_or_create(username=options["user"])
        _, full = api_token_create(user=user, name=options["name"])
        self.stdout.write(full)
