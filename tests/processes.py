"""Child processes of end-to-end tests (importable from any test module: tests/ is on
sys.path): one process with its own log file, stopped with SIGTERM, then SIGKILL.

Each child leads a process group of its own, and a kill or a stop ends the whole group,
as systemd ends a service's control group: a Celery worker's pool processes and its
embedded beat must not outlive it (orphans kept ticking against a dropped database).
"""

import contextlib
import os
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Child:
    """One child process with its log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        *,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.process = self._spawn()

    def _spawn(self) -> "subprocess.Popen[bytes]":
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (a shutdown), SIGKILL after ``timeout``; then whatever of its group is left."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._kill_group()

    def kill(self) -> None:
        """SIGKILL to the whole group: a crash, not a shutdown."""
        self._kill_group()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.process = self._spawn()

    def start(self) -> None:
        """Start it again after a kill() or stop()."""
        assert not self.alive(), f"{self.name} is running"
        self.process = self._spawn()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"
