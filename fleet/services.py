"""Writes to the fleet registry."""

from django.contrib.auth.models import Permission, User
from django.db import transaction

from fleet.auth import token_generate
from fleet.models import ApiToken

CI_PERMISSIONS = (
    "ota.add_artifact",
    "ota.view_artifact",
    "ota.view_model",
    "ota.add_rollout",
    "ota.view_rollout",
    "telemetry.view_rollup",
)

# What an operator's token needs for `fleetctl rollout`: read, create, start and steer.
OPERATOR_PERMISSIONS = (
    "ota.view_artifact",
    "ota.view_model",
    "ota.view_rollout",
    "ota.add_rollout",
    "ota.start_rollout",
    "ota.control_rollout",
    "telemetry.view_rollup",
)


@transaction.atomic
def ci_user_get_or_create(*, username: str) -> User:
    """The service account CI publishes as: no password, only publish/read permissions."""
    return account_get_or_create(username=username, permissions=CI_PERMISSIONS)


@transaction.atomic
def account_get_or_create(*, username: str, permissions: tuple[str, ...]) -> User:
    """An account holding `permissions`; a new one has no password (tokens only)."""
    user, created = User.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    for perm in permissions:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def api_token_create(*, user: User, name: str) -> tuple[ApiToken, str]:
    """Create a token; the clear token is returned once and never stored."""
    full, lookup, secret_hash = token_generate()
    token = ApiToken.objects.create(user=user, name=name, lookup=lookup, secret_hash=secret_hash)
    return token, full
