"""Create an API token for CI (``fleetctl publish``), an operator (``fleetctl rollout``) or
a script, with explicit scopes."""

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from fleet.auth import ALL_MODELS, ROLES, SCOPES
from fleet.errors import ServiceError
from fleet.services import (
    api_token_create,
    api_token_missing_permissions,
    service_account_get_or_create,
)

_DURATION = re.compile(r"(\d{1,5})([hd])")


def _expiry(raw: str | None) -> datetime | None:
    """``90d``, ``12h`` or an ISO 8601 date/time (UTC unless it says otherwise)."""
    if not raw:
        return None
    match = _DURATION.fullmatch(raw.strip())
    if match:
        amount, unit = int(match[1]), match[2]
        return timezone.now() + (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise CommandError(
            f"--expires {raw!r}: give a duration (90d, 12h) or a date (2027-06-30)"
        ) from None
    return when if timezone.is_aware(when) else when.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Create an API token with explicit scopes (--role and/or --scope) and print it once. "
        "--role ci: publish and open draft rollouts of the --model(s); --role operator: "
        "create, start and steer rollouts (of every model unless --model). A missing --user "
        "is created as a service account with the permissions the scopes need; an existing "
        "person's account is not changed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", default="ci", help="the account it acts as (default: ci)")
        parser.add_argument("--name", default="", help="a label for the token (default: user)")
        parser.add_argument(
            "--role", choices=sorted(ROLES), help="a usual set of scopes: ci or operator"
        )
        parser.add_argument(
            "--scope",
            action="append",
            choices=SCOPES,
            default=[],
            help="what the token may do (added to the role's); repeat for several "
            "(docs/security.md)",
        )
        parser.add_argument(
            "--model",
            action="append",
            default=[],
            help="a model publish/rollouts scopes may act on; repeat, or '*' for every model",
        )
        parser.add_argument("--expires", help="90d, 12h or a date (default: never)")

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = [*ROLES.get(options["role"] or "", ()), *options["scope"]]
        if not scopes:
            raise CommandError(
                f"say what the token may do: --role ({', '.join(sorted(ROLES))}) and/or "
                f"--scope ({', '.join(SCOPES)})"
            )
        models = options["model"] or ([ALL_MODELS] if options["role"] == "operator" else [])
        expires_at = _expiry(options["expires"])
        existing = User.objects.filter(username=options["user"]).first()
        if existing is not None and not existing.is_active:
            raise CommandError(f"{existing.username} is disabled")
        try:
            with transaction.atomic():  # a refused token leaves no new account behind
                user = service_account_get_or_create(username=options["user"], scopes=scopes)
                token, full = api_token_create(
                    user=user,
                    name=options["name"] or user.username,
                    scopes=scopes,
                    model_names=models,
                    expires_at=expires_at,
                )
        except ServiceError as exc:
            raise CommandError(exc.detail) from None
        missing = api_token_missing_permissions(user=user, scopes=scopes)
        if missing:
            self.stderr.write(
                f"warning: {user.username} lacks {', '.join(missing)}; the token cannot "
                "use them until the account has them"
            )
        if token.expires_at is not None:
            self.stderr.write(f"expires {token.expires_at.isoformat()}")
        self.stdout.write(full)
