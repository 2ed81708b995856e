"""API tokens for CI and scripts: ``Authorization: Bearer fleet_<prefix>_<secret>``.

Only a SHA-256 of the secret is stored, so a database dump does not leak usable tokens
(DRF's built-in authtoken stores them in clear).
"""

import hashlib
import hmac
import secrets

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

TOKEN_PREFIX = "fleet_"  # noqa: S105 - a public marker, not a secret


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_generate() -> tuple[str, str, str]:
    """A new token as (full token to hand out once, lookup prefix, stored hash)."""
    lookup = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{lookup}_{secret}", lookup, token_hash(secret)


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
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
