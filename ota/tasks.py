"""Celery tasks of the model registry: small, idempotent, one service call each."""

from celery import shared_task

from ota.repository import repository_refresh


@shared_task
def tuf_refresh_task() -> list[str]:
    """Re-sign snapshot/timestamp before they expire so frozen devices notice."""
    return repository_refresh()
