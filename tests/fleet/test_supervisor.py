"""The quick start's supervisor (fleet/devserver.py) restarts a child that crashed, with a
backoff, says so, and leaves the others running (issue 16): a killed bridge used to stop
the whole system."""

import functools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Each child appends its pid to <name>.pids, then sleeps (or exits at once: "flaky").
CHILD = "import os, sys, time; open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); " \
    "time.sleep(0 if sys.argv[2] == 'flaky' else 3600)"  # fmt: skip

DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from fleet.devserver import Child, Supervisor, describe

    work = Path(sys.argv[1])
    supervisor = Supervisor(work / "logs", {"PATH": "/usr/bin:/bin"}, restart_min=0.2,
                            restart_max=1.6)
    for name in sys.argv[2:]:
        supervisor.start(Child(name, [sys.executable, "-c", CHILD,
                                      str(work / f"{name}.pids"), name]))
    supervisor.wait(lambda child, exited: print(describe(child, exited), flush=True),
                    poll_seconds=0.05)
    """
)


def wait_for[T](predicate: Callable[[], T], what: str, timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def pids(work: Path, name: str) -> list[int]:
    try:
        return [int(line) for line in (work / f"{name}.pids").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone too: the supervisor reaps its children, so this one runs.
    return True


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*names: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", f"CHILD = {CHILD!r}\n" + DRIVER, str(tmp_path), *names],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        for name in names:
            wait_for(functools.partial(pids, tmp_path, name), f"{name} to start")
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def test_a_killed_child_is_restarted_and_logged_and_the_others_are_untouched(
    supervised, tmp_path: Path
):
    # given a supervisor with three children
    driver = supervised("broker", "bridge", "web")
    before = {name: pids(tmp_path, name) for name in ("broker", "bridge", "web")}

    # when the bridge is killed
    (crashed,) = before["bridge"]
    os.kill(crashed, signal.SIGKILL)

    # then it runs again, under a new pid
    restarted = wait_for(lambda: pids(tmp_path, "bridge")[1:], "the bridge to restart")
    assert restarted[0] != crashed
    assert alive(restarted[0])
    # and the supervisor said so, in the bridge's log
    log = (tmp_path / "logs" / "bridge.log").read_text()
    assert re.search(r"bridge exited with signal 9 after \d+ s; restarting in 0.2 s", log), log
    # and the broker and web server are the same processes, still running
    for name in ("broker", "web"):
        assert pids(tmp_path, name) == before[name]
        assert alive(before[name][0])
    assert driver.poll() is None

    # when the supervisor is told to stop, everything stops
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(30) == 0
    out = driver.stdout.read()
    assert "bridge exited with signal 9" in out
    for pid in (before["broker"][0], before["web"][0], restarted[0]):
        wait_for(lambda pid=pid: not alive(pid), f"pid {pid} to end")  # type: ignore[misc]


def test_a_child_that_keeps_failing_is_restarted_with_a_doubling_backoff(
    supervised, tmp_path: Path
):
    driver = supervised("flaky")
    wait_for(lambda: len(pids(tmp_path, "flaky")) >= 6, "five restarts")
    driver.send_signal(signal.SIGTERM)
    driver.wait(30)
    delays = re.findall(r"restarting in ([\d.]+) s", driver.stdout.read())
    assert [float(d) for d in delays[:5]] == [0.2, 0.4, 0.8, 1.6, 1.6]
