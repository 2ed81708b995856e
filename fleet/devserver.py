"""The quick start's process supervisor: every part of the system as a child process.

Each child logs to ``$FLEET_DATA_DIR/logs/<name>.log``; when one exits, the others are
stopped, so a broken part is never hidden behind a running dashboard.
"""

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


@dataclass
class Child:
    name: str
    argv: list[str]
    ready_port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, child: Child, ready_timeout: float = 60) -> None:
        log = (self.log_dir / f"{child.name}.log").open("ab")
        child.process = subprocess.Popen(  # noqa: S603 - our own commands
            child.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append(child)
        if child.ready_port is not None and not wait_for_port(child.ready_port, ready_timeout):
            self.stop_all()
            raise RuntimeError(f"{child.name} did not listen on {child.ready_port}: see {log.name}")

    def manage(self, name: str, *args: str, ready_port: int | None = None) -> None:
        self.start(Child(name, [sys.executable, "manage.py", *args], ready_port))

    def wait(self, on_exit: Callable[[Child, int], None]) -> None:
        """Block until a child exits or we are told to stop; then stop everything."""
        stop = False

        def _stop(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            while not stop:
                for child in self.children:
                    code = child.process.poll() if child.process else None
                    if code is not None:
                        on_exit(child, code)
                        return
                time.sleep(0.5)
        finally:
            self.stop_all()

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
