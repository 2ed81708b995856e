"""The fleet-wide audit trail: one ``AuditEvent`` per model registered, publish,
release-key or top-level key change, device revocation and API or enrollment token change,
written by the service that makes the change, in its transaction. Rollouts keep their own
trail (``ota.RolloutAuditEvent``); the admin's audit log shows both."""

from typing import Any

from fleet.models import AuditEvent

# action -> how the audit log says it
ACTIONS: dict[str, str] = {
    "model.register": "registered a model",
    "publish": "published an artifact",
    "release_key.add": "added a release key",
    "release_key.revoke": "revoked a release key",
    "tuf_key.rotate": "rotated a top-level TUF key",
    "device.revoke": "revoked a device",
    "api_token.create": "created an API token",
    "api_token.change": "changed an API token",
    "api_token.revoke": "revoked an API token",
    "enrollment_token.create": "created an enrollment token",
}
# The actor of a change made on the server's command line (manage.py), not by a signed-in user.
COMMAND_LINE = "manage.py"


def audit_record(*, action: str, target: str, by: Any = None, reason: str = "") -> AuditEvent:
    """Record ``action`` on ``target``; ``by`` a user, or None for the command line."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    signed_in = by is not None and getattr(by, "is_authenticated", False)
    return AuditEvent.objects.create(
        actor=by if signed_in else None,  # a token acts as its user (fleet.auth.TokenUser)
        actor_name=by.get_username() if signed_in else COMMAND_LINE,
        action=action,
        target=target[:200],
        reason=reason,
    )
