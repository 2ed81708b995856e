"""The Celery worker keeps its database connection between tasks (a rollout evaluation per
batch of device events reconnected every time), and still drops one that broke or aged."""

import pytest
from celery import signals
from celery.fixups.django import DjangoWorkerFixup
from django.db import connection
from service_check import require_postgresql

from fleet.celery import app
from ota.tasks import rollout_evaluate_task

pytestmark = pytest.mark.django_db(transaction=True)


def _around_a_task(fixup: DjangoWorkerFixup) -> None:
    """What the worker does around one task: the fixup's and our handlers, pre and post."""
    task = rollout_evaluate_task  # its request, outside a run: not eager
    fixup.on_task_prerun(task)
    signals.task_prerun.send(sender=task, task=task, task_id="t", args=(), kwargs={})
    fixup.on_task_postrun(task)
    signals.task_postrun.send(sender=task, task=task, task_id="t", args=(), kwargs={})


def test_a_connection_outlives_tasks_until_it_ages(settings) -> None:
    fixup = DjangoWorkerFixup(app)
    assert fixup.db_reuse_max  # else Celery closes the connection around every task
    connection.settings_dict["CONN_MAX_AGE"] = 60
    try:
        connection.close()
        connection.ensure_connection()
        opened = connection.connection
        for _ in range(5):
            _around_a_task(fixup)
            connection.ensure_connection()
            assert connection.connection is opened
        # once older than CONN_MAX_AGE it is closed after the next task, as between requests
        connection.close_at = 0.0
        _around_a_task(fixup)
        assert connection.connection is None
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = 0
        connection.close()


def test_a_broken_connection_is_dropped_between_tasks() -> None:
    require_postgresql(connection.vendor)  # Django takes SQLite connections as usable
    fixup = DjangoWorkerFixup(app)
    connection.settings_dict["CONN_MAX_AGE"] = 60
    try:
        connection.close()
        connection.ensure_connection()
        connection.errors_occurred = True
        connection.connection.close()  # the server went away under it
        _around_a_task(fixup)
        assert connection.connection is None
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = 0
        connection.close()
