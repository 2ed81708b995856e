"""The quick start's process supervisor: every part of the system as a child process.

Each child logs to ``$FLEET_DATA_DIR/logs/<name>.log``. A child that exits is started
again after a backoff (1 s, doubling up to 30 s, back to 1 s once it ran for a minute),
the others untouched, and the supervisor says so on its stderr and in the child's log:
a crashed bridge must not take the broker, the web server and the devices with it.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def first_free_port(preferred: int) -> int:
    for port in range(preferred, preferred + 100):
        if port_free(port):
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a child that ran this long starts its backoff over


@dataclass
class Child:
    name: str
    argv: list[str]
    ready_port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None


@dataclass(frozen=True)
class Exit:
    """A child that exited: its exit status (negative: the signal), how long it ran, and
    when it is started again."""

    code: int
    ran_seconds: float
    restart_in: float
    restarts: int


class Supervisor:
    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str],
        *,
        restart_min: float = RESTART_MIN_SECONDS,
        restart_max: float = RESTART_MAX_SECONDS,
    ) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[Child] = []
        self.restart_min = restart_min
        self.restart_max = restart_max
        log_dir.mkdir(parents=True, exist_ok=True)

    def _log_path(self, child: Child) -> Path:
        return self.log_dir / f"{child.name}.log"

    def _spawn(self, child: Child) -> None:
        with self._log_path(child).open("ab") as log:
            child.process = subprocess.Popen(  # noqa: S603 - our own commands
                child.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child.started_at = time.monotonic()

    def start(self, child: Child, ready_timeout: float = 60) -> None:
        self._spawn(child)
        self.children.append(child)
        if child.ready_port is not None and not wait_for_port(child.ready_port, ready_timeout):
            self.stop_all()
            raise RuntimeError(
                f"{child.name} did not listen on {child.ready_port}: see {self._log_path(child)}"
            )

    def manage(self, name: str, *args: str, ready_port: int | None = None) -> None:
        self.start(Child(name, [sys.executable, "manage.py", *args], ready_port))

    def wait(self, on_exit: Callable[[Child, Exit], None], poll_seconds: float = 0.5) -> None:
        """Restart children that exit (``on_exit`` is told first) until we are told to stop
        (SIGTERM, SIGINT); then stop everything."""
        stop = False

        def _stop(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            while not stop:
                for child in self.children:
                    self._watch(child, on_exit)
                time.sleep(poll_seconds)
        finally:
            self.stop_all()

    def _watch(self, child: Child, on_exit: Callable[[Child, Exit], None]) -> None:
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restart_at = None
                self._spawn(child)
            return
        code = child.process.poll() if child.process else None
        if code is None or child.process is None:
            return
        # What the child started and left behind (a broker under `manage.py broker`, a
        # Celery pool) would hold its port or work on: its whole group goes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        ran = now - child.started_at
        if ran >= STABLE_SECONDS or child.backoff == 0:
            child.backoff = self.restart_min
        else:
            child.backoff = min(child.backoff * 2, self.restart_max)
        child.restarts += 1
        child.restart_at = now + child.backoff
        exited = Exit(code=code, ran_seconds=ran, restart_in=child.backoff, restarts=child.restarts)
        with contextlib.suppress(OSError), self._log_path(child).open("a") as log:
            log.write(f"[supervisor] {describe(child, exited)}\n")
        on_exit(child, exited)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.process is not None and child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()


def describe(child: Child, exited: Exit) -> str:
    """One line for the operator: who exited, how, and when it starts again."""
    how = f"signal {-exited.code}" if exited.code < 0 else f"status {exited.code}"
    return (
        f"{child.name} exited with {how} after {exited.ran_seconds:.0f} s; "
        f"restarting in {exited.restart_in:g} s (restart {exited.restarts})"
    )
