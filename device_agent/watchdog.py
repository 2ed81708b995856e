"""systemd's watchdog fed while the agent's update loop shows signs of life."""

import threading
import time
from typing import TYPE_CHECKING

from device_agent.systemd import Notifier

if TYPE_CHECKING:
    from device_agent.runner import Runner

# Longer than any single step between two signs of life (a trial has its own deadline).
WATCHDOG_STALE_S = 300.0


def systemd_watch(runner: "Runner", stop: threading.Event) -> None:
    """Tell systemd we are ready, then ping its watchdog while the update loop is alive.

    A loop that shows no life for WATCHDOG_STALE_S stops the pings, and systemd restarts
    the agent, which then resumes or rolls back from its journal.
    """
    notifier = Notifier()
    if not notifier.enabled:
        return
    notifier.ready(f"device {runner.config.device_id}")
    if notifier.watchdog_interval is None:
        return

    def ping() -> None:
        while not stop.wait(min(notifier.watchdog_interval or 1.0, 5.0)):
            if time.monotonic() - runner.last_alive < WATCHDOG_STALE_S:
                notifier.watchdog()

    threading.Thread(target=ping, name="systemd-watchdog", daemon=True).start()
