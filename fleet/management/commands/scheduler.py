"""The embedded default's beat: runs CELERY_BEAT_SCHEDULE's tasks in this process.

With no CELERY_BROKER_URL, tasks run eagerly (fleet/settings.py), so one process can
both decide when a periodic task is due (Celery's own schedule objects) and run it.
Production runs `celery -A fleet beat` and `celery -A fleet worker` instead.
"""

import logging
import signal
import threading
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from celery.schedules import BaseSchedule, schedule
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections
from django.utils import timezone

log = logging.getLogger(__name__)


def _as_schedule(value: Any) -> BaseSchedule:
    if isinstance(value, timedelta):
        return schedule(run_every=value)
    if isinstance(value, int | float):
        return schedule(run_every=timedelta(seconds=value))
    return value


class Command(BaseCommand):
    help = "Run the periodic tasks (rollout ticks, TUF re-signing, CRL...) in-process."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="run every task once and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.CELERY_BROKER_URL and not options["once"]:
            raise CommandError("CELERY_BROKER_URL is set: run `celery -A fleet beat` instead")
        current_app.loader.import_default_modules()  # register every app's tasks.py
        entries = {
            name: (entry["task"], _as_schedule(entry["schedule"]))
            for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
        }
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        last_run: dict[str, datetime] = {}
        self.stdout.write(f"scheduler: {', '.join(sorted(entries))}")
        while not stop.is_set():
            wait = 60.0
            for name, (task_name, sched) in entries.items():
                due, next_in = (True, 0.0) if name not in last_run else sched.is_due(last_run[name])
                if due:
                    last_run[name] = timezone.now()
                    self._run(name, task_name, fresh_connection=not options["once"])
                    due, next_in = sched.is_due(last_run[name])
                wait = min(wait, max(float(next_in), 1.0))
            if options["once"]:
                return
            stop.wait(wait)

    def _run(self, name: str, task_name: str, *, fresh_connection: bool) -> None:
        if fresh_connection:  # a long-lived loop must not hold a dead connection
            close_old_connections()
        try:
            result = current_app.tasks[task_name].apply().get(propagate=True)
            log.info("scheduler: %s -> %r", name, result)
        except Exception:  # one failing task must not stop the others
            log.exception("scheduler: %s failed", name)
