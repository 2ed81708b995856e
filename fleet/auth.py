"""API tokens for CI and scripts: ``Authorization: Bearer fleet_<prefix>_<secret>``.

Only a SHA-256 of the secret is stored, so a database dump does not leak usable tokens
(DRF's built-in authtoken stores them in clear).

A token carries scopes (docs/security.md, "API tokens"): a request made with it has the
permissions its scopes allow *and* its user has, is never staff, and acts on models
outside its ``model_names`` nowhere. Tokens made before scopes existed carry ``user``:
every right of their user, as then (an operator may still make such a token, explicitly).
"""

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from django.utils.functional import LazyObject
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from device_agent.protocol.errors import ErrorCode

if TYPE_CHECKING:
    from fleet.models import ApiToken

TOKEN_PREFIX = "fleet_"  # noqa: S105 - a public marker, not a secret

SCOPE_PUBLISH = "publish"
SCOPE_ROLLOUTS_CREATE = "rollouts:create"
SCOPE_ROLLOUTS_OPERATE = "rollouts:operate"
SCOPE_FLEET_READ = "fleet:read"
SCOPE_DEVICES_ENROLL = "devices:enroll"
# Every right of the token's user, staff included: an operator's own scripts, and the
# tokens made before scopes existed. Never for CI.
SCOPE_USER = "user"
ALL_MODELS = "*"

_CATALOG = frozenset({"ota.view_model", "ota.view_artifact"})
# The most each scope allows; a request gets the part of it its user has.
SCOPE_PERMISSIONS: dict[str, frozenset[str]] = {
    SCOPE_PUBLISH: _CATALOG | {"ota.add_artifact"},
    SCOPE_ROLLOUTS_CREATE: _CATALOG | {"ota.view_rollout", "ota.add_rollout"},
    SCOPE_ROLLOUTS_OPERATE: _CATALOG
    | {"ota.view_rollout", "ota.start_rollout", "ota.control_rollout"},
    SCOPE_FLEET_READ: _CATALOG
    | {
        "ota.view_rollout",
        "fleet.view_device",
        "fleet.view_group",
        "fleet.view_dynamicgroup",
        "telemetry.view_sample",
        "telemetry.view_rollup",
    },
    SCOPE_DEVICES_ENROLL: frozenset({"fleet.add_enrollmenttoken"}),
}
SCOPES = (*SCOPE_PERMISSIONS, SCOPE_USER)
# Scopes that act on a model: a token with one of them names its models (or ALL_MODELS).
MODEL_SCOPES = frozenset({SCOPE_PUBLISH, SCOPE_ROLLOUTS_CREATE, SCOPE_ROLLOUTS_OPERATE})
# api_token_create --role: the usual sets of scopes.
ROLES: dict[str, tuple[str, ...]] = {
    "ci": (SCOPE_PUBLISH, SCOPE_ROLLOUTS_CREATE),  # publish, open draft rollouts
    "operator": (SCOPE_ROLLOUTS_CREATE, SCOPE_ROLLOUTS_OPERATE),  # fleetctl rollout ...
}


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_generate() -> tuple[str, str, str]:
    """A new token as (full token to hand out once, lookup prefix, stored hash)."""
    lookup = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{lookup}_{secret}", lookup, token_hash(secret)


def scope_permissions(scopes: list[str] | tuple[str, ...]) -> frozenset[str]:
    return frozenset().union(*(SCOPE_PERMISSIONS.get(s, frozenset()) for s in scopes))


class TokenUser(LazyObject):
    """The token's user as views and services see it: limited to the token's scopes.

    A lazy-object proxy, so it is still the user wherever a ``User`` is expected (foreign
    keys, ``get_username``); only the permission checks answer for the token.
    """

    def __init__(self, user: Any, token: "ApiToken") -> None:
        super().__init__()
        self._wrapped = user
        self.__dict__["_allowed"] = scope_permissions(token.scopes)
        self.__dict__["_models"] = frozenset(token.model_names)

    def _setup(self) -> None:  # the user is given, never built lazily
        raise AssertionError("TokenUser wraps a loaded user")

    @property
    def is_staff(self) -> bool:
        return False

    @property
    def is_superuser(self) -> bool:
        return False

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return perm in self.__dict__["_allowed"] and bool(self._wrapped.has_perm(perm, obj))

    def has_perms(self, perm_list: Any, obj: object = None) -> bool:
        return all(self.has_perm(perm, obj) for perm in perm_list)

    def has_module_perms(self, app_label: str) -> bool:
        return any(p.startswith(f"{app_label}.") for p in self.__dict__["_allowed"]) and bool(
            self._wrapped.has_module_perms(app_label)
        )

    def get_all_permissions(self, obj: object = None) -> set[str]:
        return set(self._wrapped.get_all_permissions(obj)) & self.__dict__["_allowed"]

    def may_act_on_model(self, name: str) -> bool:
        models: frozenset[str] = self.__dict__["_models"]
        return ALL_MODELS in models or name in models


def token_model_check(user: object, model_name: str) -> None:
    """Refuse (``forbidden``) when the request's token is limited to other models."""
    # Not at the top: fleet.errors imports DRF's views, whose settings import this module.
    from fleet.errors import ServiceError

    if isinstance(user, TokenUser) and not user.may_act_on_model(model_name):
        raise ServiceError(
            ErrorCode.FORBIDDEN, f"this API token may not act on the model {model_name}"
        )


class TokenExpired(exceptions.AuthenticationFailed):
    default_detail = "this API token has expired: ask an operator for a new one"
    default_code = ErrorCode.TOKEN_EXPIRED.value


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[object, object] | None:
        from fleet.models import ApiToken

        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme not in {"Bearer", "Token"}:
            return None
        raw = raw.strip()
        if not raw.startswith(TOKEN_PREFIX) or raw.count("_") < 2:
            raise exceptions.AuthenticationFailed("malformed API token")
        lookup, _, secret = raw[len(TOKEN_PREFIX) :].partition("_")
        token = (
            ApiToken.objects.select_related("user")
            .filter(lookup=lookup, revoked_at__isnull=True)
            .first()
        )
        if token is None or not hmac.compare_digest(token.secret_hash, token_hash(secret)):
            raise exceptions.AuthenticationFailed("invalid or revoked API token")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("the token's user is disabled")
        now = timezone.now()
        if token.expires_at is not None and token.expires_at <= now:
            raise TokenExpired()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        if SCOPE_USER in token.scopes:
            return token.user, token
        return TokenUser(token.user, token), token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
