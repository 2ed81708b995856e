"""Celery tasks of the fleet registry: small, idempotent, one service call each."""

from celery import shared_task

from fleet.director import desired_reissue_expiring
from fleet.enrollment import acl_write, crl_write


@shared_task
def desired_reissue_expiring_task() -> int:
    """Re-sign desired states that expire within a third of their TTL (beat, hourly)."""
    return desired_reissue_expiring()


@shared_task
def crl_refresh_task() -> str:
    """Re-sign the CRL daily: Mosquitto refuses every client once its nextUpdate passes."""
    acl_write()
    return str(crl_write())
