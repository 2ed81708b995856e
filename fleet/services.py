"""Writes to the fleet registry."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.contrib.auth.models import Permission, User
from django.db import transaction
from django.utils import timezone

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import MODEL_NAME
from fleet.audit import audit_record
from fleet.auth import (
    ALL_MODELS,
    MODEL_SCOPES,
    SCOPE_PUBLISH,
    SCOPES,
    scope_permissions,
    token_generate,
)
from fleet.errors import ServiceError
from fleet.identifiers import identifiers_check
from fleet.models import ApiToken


def _is_service_account(user: User) -> bool:
    """No way to log in with a password (none set, or unusable) and not staff."""
    can_log_in = bool(user.password) and user.has_usable_password()
    return not (can_log_in or user.is_staff or user.is_superuser)


@transaction.atomic
def service_account_get_or_create(*, username: str, scopes: Sequence[str]) -> User:
    """The account a token acts as, with the permissions its scopes need.

    A new account is a service account (no password, not staff) with exactly those
    permissions; an existing service account gains what new scopes need. A person's
    account (a usable password, or staff) is left as it is: a token never widens it.
    """
    user, created = User.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    if created or _is_service_account(user):
        for perm in sorted(scope_permissions(tuple(scopes))):
            app_label, codename = perm.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
    return User.objects.get(pk=user.pk)  # fresh: permissions are cached per instance


def ci_user_get_or_create(*, username: str) -> User:
    """The service account CI publishes as (``service_account_get_or_create``, publish)."""
    return service_account_get_or_create(username=username, scopes=[SCOPE_PUBLISH])


def api_token_missing_permissions(*, user: User, scopes: Sequence[str]) -> list[str]:
    """The permissions the scopes need that the user lacks (the token cannot use them)."""
    return sorted(p for p in scope_permissions(tuple(scopes)) if not user.has_perm(p))


def api_token_create(
    *,
    user: User,
    name: str,
    scopes: Sequence[str],
    model_names: Sequence[str] = (),
    expires_at: datetime | None = None,
    by: Any = None,
) -> tuple[ApiToken, str]:
    """Create a token with explicit scopes; the clear token is returned once, never stored.

    ``model_names`` (or ``*``) is required with, and only with, a scope that acts on models.
    """
    scopes = sorted(set(scopes))
    models = sorted(set(model_names))
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise ServiceError(
            ErrorCode.MALFORMED,
            f"unknown scope {', '.join(unknown)}; choose from {', '.join(SCOPES)}"
            if unknown
            else f"a token needs at least one scope: {', '.join(SCOPES)}",
        )
    identifiers_check(MODEL_NAME, [m for m in models if m != ALL_MODELS], field="models")
    acts_on_models = MODEL_SCOPES.intersection(scopes)
    if acts_on_models and not models:
        raise ServiceError(
            ErrorCode.MALFORMED,
            f"{', '.join(sorted(acts_on_models))} act on models: name them, or * for every model",
        )
    if models and not acts_on_models:
        raise ServiceError(
            ErrorCode.MALFORMED, "models only limit publish, rollouts:create and rollouts:operate"
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError(ErrorCode.MALFORMED, "the expiry is in the past")
    full, lookup, secret_hash = token_generate()
    token = ApiToken.objects.create(
        user=user,
        name=name,
        lookup=lookup,
        secret_hash=secret_hash,
        scopes=scopes,
        model_names=models,
        expires_at=expires_at,
    )
    audit_record(
        action="api_token.create",
        target=f"API token {name} ({lookup}) of {user.get_username()}: "
        f"{', '.join(scopes)}" + (f" on {', '.join(models)}" if models else ""),
        by=by,
    )
    return token, full
