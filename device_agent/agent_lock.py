"""Exclusive use of the agent directory, so two processes never change its state at once."""

import contextlib
import fcntl
import os
from collections.abc import Iterator

from device_agent.command_error import CommandError
from device_agent.config import Layout


@contextlib.contextmanager
def agent_lock(layout: Layout) -> Iterator[None]:
    """Exclusive use of the agent directory (one `run`, or one offline `rollback`)."""
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError("forbidden", f"another fleet-agent is using {layout.root}") from None
        yield
    finally:
        os.close(fd)
