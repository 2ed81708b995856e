"""The Fleet OTA Django project and the fleet registry."""

from fleet.celery import app as celery_app

__all__ = ["celery_app"]
