"""Enrollment and revocation: how a device gets, and loses, its MQTT identity."""

import hmac
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.topics import is_valid_device_id
from fleet import ca, hooks
from fleet.audit import audit_record
from fleet.auth import token_generate, token_hash
from fleet.errors import ServiceError
from fleet.keys import director_public_pem
from fleet.models import Device, DeviceCertificate, EnrollmentToken, Group

log = logging.getLogger(__name__)
ENROLLMENT_PREFIX = "enr_"


@dataclass(frozen=True)
class Enrollment:
    """What a device must keep from enrollment: its certificate and the trust to pin."""

    device: Device
    certificate_pem: bytes
    ca_certificate_pem: bytes
    director_public_key_pem: bytes
    tuf_root: dict[str, object]
    broker_url: str
    tuf_url: str


def enrollment_token_create(
    *,
    by: User | None,
    hours: int | None = None,
    hardware: str = "",
    group: Group | None = None,
) -> tuple[EnrollmentToken, str]:
    """A one-time token; the clear value is returned once and never stored."""
    full, lookup, secret_hash = token_generate()
    secret = full.split("_", 2)[2]
    token = EnrollmentToken.objects.create(
        lookup=lookup,
        secret_hash=secret_hash,
        expires_at=timezone.now() + timedelta(hours=hours or settings.FLEET_ENROLLMENT_TOKEN_HOURS),
        hardware=hardware,
        group=group,
        created_by=by,
    )
    audit_record(
        action="enrollment_token.create",
        target=f"enrollment token {lookup}"
        + (f" for {hardware}" if hardware else "")
        + (f" into group {group.name}" if group else ""),
        by=by,
    )
    return token, f"{ENROLLMENT_PREFIX}{lookup}_{secret}"


def _token_claim(raw: str) -> EnrollmentToken:
    lookup, sep, secret = raw.removeprefix(ENROLLMENT_PREFIX).partition("_")
    if not raw.startswith(ENROLLMENT_PREFIX) or not sep:
        raise ServiceError(ErrorCode.UNAUTHORIZED, "malformed enrollment token")
    token = EnrollmentToken.objects.select_for_update().filter(lookup=lookup).first()
    if token is None or not hmac.compare_digest(token.secret_hash, token_hash(secret)):
        raise ServiceError(ErrorCode.UNAUTHORIZED, "unknown enrollment token")
    if token.used_at is not None:
        raise ServiceError(ErrorCode.UNAUTHORIZED, "this enrollment token was already used")
    if token.expires_at <= timezone.now():
        raise ServiceError(ErrorCode.UNAUTHORIZED, "this enrollment token has expired")
    return token


def device_enroll(
    *, token: str, device_id: str, hardware: str, csr_pem: bytes, agent_version: str = ""
) -> Enrollment:
    """Check the token, then the CSR; create the device and sign its certificate, all or
    nothing (a refusal leaves the token unused).

    The token comes first so that a caller without one costs no X.509 parsing and learns
    nothing about what else it sent.
    """
    with transaction.atomic():
        claimed = _token_claim(token)
        if not is_valid_device_id(device_id):
            raise ServiceError(ErrorCode.MALFORMED, "device_id must match [A-Za-z0-9_-]{1,64}")
        try:
            ca.csr_public_key(csr_pem)
        except ca.CsrError as exc:
            raise ServiceError(ErrorCode.MALFORMED, str(exc)) from None
        root = hooks.tuf_root()
        if root is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "the TUF repository is not initialised")
        if claimed.hardware and claimed.hardware != hardware:
            raise ServiceError(
                ErrorCode.HW_MISMATCH,
                f"this token enrolls {claimed.hardware} devices, not {hardware}",
            )
        if Device.objects.filter(device_id=device_id).exists():
            raise ServiceError(ErrorCode.CONFLICT, f"device id {device_id} is already enrolled")
        try:
            with transaction.atomic():
                device = Device.objects.create(
                    device_id=device_id, hardware=hardware, agent_version=agent_version[:32]
                )
        except IntegrityError:  # a concurrent enrollment took the id
            raise ServiceError(
                ErrorCode.CONFLICT, f"device id {device_id} is already enrolled"
            ) from None
        if claimed.group is not None:
            device.groups.add(claimed.group)
        issued = ca.device_certificate_issue(csr_pem, device_id)
        DeviceCertificate.objects.create(
            serial=issued.serial, device=device, not_after=issued.not_after
        )
        claimed.used_at = timezone.now()
        claimed.device = device
        claimed.save(update_fields=["used_at", "device"])
    log.info("enrolled %s (%s)", device_id, hardware)
    return Enrollment(
        device=device,
        certificate_pem=issued.pem,
        ca_certificate_pem=ca.ca_certificate_pem(),
        director_public_key_pem=director_public_pem(),
        tuf_root=json.loads(root),
        broker_url=settings.FLEET_MQTT_URL,
        tuf_url=f"{settings.FLEET_PUBLIC_URL}/tuf/",
    )


def crl_write() -> Path:
    """Regenerate the CRL file from every revoked certificate (Mosquitto re-reads on SIGHUP)."""
    revoked = [
        (c.serial, c.revoked_at)
        for c in DeviceCertificate.objects.filter(revoked_at__isnull=False).order_by("id")
        if c.revoked_at is not None
    ]
    path = Path(settings.FLEET_CRL_PATH)
    ca.write_atomic(path, ca.crl_build(revoked))
    return path


ACL_REVOKED_HEADER = (
    "\n# --- revoked devices (written by fleet.enrollment.acl_write; do not edit) ---\n"
)


def acl_write() -> Path | None:
    """Render the broker ACL: the template plus a deny-everything block per revoked device.

    The CRL only stops new connections; a revoked device that is connected keeps its
    session. A ``user <id>`` block overrides the ``%u`` patterns and Mosquitto applies it
    to live sessions on SIGHUP, so the device loses every right at the same reload.
    Disabled (returns None) unless ``FLEET_MQTT_ACL_PATH`` is set.
    """
    if not settings.FLEET_MQTT_ACL_PATH:
        return None
    template = Path(settings.FLEET_MQTT_ACL_TEMPLATE).read_text()
    revoked = (
        Device.objects.filter(revoked_at__isnull=False)
        .order_by("device_id")
        .values_list("device_id", flat=True)
    )
    blocks = "".join(f"\nuser {device_id}\ntopic deny #\n" for device_id in revoked)
    path = Path(settings.FLEET_MQTT_ACL_PATH)
    ca.write_atomic(path, (template + ACL_REVOKED_HEADER + blocks).encode())
    return path


def _broker_files_write() -> None:
    crl_write()
    acl_write()


def device_revoke(*, device: Device, reason: str, by: Any = None) -> Device:
    """Disable a device and revoke its certificates; CRL and ACL are rewritten after commit."""
    now = timezone.now()
    with transaction.atomic():
        locked = Device.objects.select_for_update().get(pk=device.pk)
        if locked.revoked_at is not None:
            raise ServiceError(ErrorCode.CONFLICT, f"{locked.device_id} is already revoked")
        locked.revoked_at = now
        locked.save(update_fields=["revoked_at"])
        locked.certificates.filter(revoked_at__isnull=True).update(revoked_at=now)
        audit_record(
            action="device.revoke", target=f"device {locked.device_id}", by=by, reason=reason
        )
        transaction.on_commit(_broker_files_write)
    log.warning("revoked %s: %s", locked.device_id, reason)
    return locked
