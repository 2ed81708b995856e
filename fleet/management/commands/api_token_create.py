"""Create an API token for CI (``fleetctl publish``), an operator (``fleetctl rollout``) or
a script."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from fleet.services import (
    CI_PERMISSIONS,
    OPERATOR_PERMISSIONS,
    account_get_or_create,
    api_token_create,
)

ROLES = {"ci": CI_PERMISSIONS, "operator": OPERATOR_PERMISSIONS}


class Command(BaseCommand):
    help = (
        "Create an account (if needed) with the role's permissions and an API token for it; "
        "prints the token once. --role ci (default): publish and create draft rollouts; "
        "--role operator: also start, pause, resume, abort and promote rollouts."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", default="ci", help="account name (default: ci)")
        parser.add_argument("--name", default="ci", help="a label for the token")
        parser.add_argument(
            "--role",
            choices=sorted(ROLES),
            default="ci",
            help="permissions granted to the account (default: ci)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = account_get_or_create(username=options["user"], permissions=ROLES[options["role"]])
        _, full = api_token_create(user=user, name=options["name"])
        self.stdout.write(full)
