"""The Celery application: rollout evaluation, timestamp re-signing, retention."""

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")

app = Celery("fleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _close_old_connections(**kwargs: Any) -> None:
    """Between tasks, what Django does between requests: close a connection that broke or
    outlived CONN_MAX_AGE (Celery keeps it otherwise: settings.CELERY_DB_REUSE_MAX)."""
    if kwargs.get("task") is not None and getattr(kwargs["task"].request, "is_eager", False):
        return  # an eager task runs inside its caller's request or transaction
    from django.db import close_old_connections

    close_old_connections()
