"""Agent benchmark (issue 4): a 100 MiB artifact through the agent's own code paths, each
against a reference doing the same work on the same machine in the same run.

- verification: `device_agent.download.verify_file` (the streaming sha256 + length check
  the runner applies to the downloaded part) vs `openssl dgst -sha256` of the same file
  (goal <= 1.15);
- download: `device_agent.download.download` (streamed to the part file, hashed as it
  arrives, fsynced) vs `curl -o` of the same URL from the same loopback server, a plain
  threaded http.server in its own process (goal <= 1.5);
- memory: `fleet-agent run` as a real process installs the 100 MiB model (TUF refresh,
  download, verify, stage, swap, trial, commit) while psutil polls its RSS: peak growth
  over its idle RSS (goal <= 16 MiB).

Only correctness and the memory bound are asserted; ratios are printed with their goals.
Run with ``pytest tests/bench/test_bench_agent.py -m bench -s``; see docs/benchmarks.md.
"""

import functools
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "device_agent" / "agent"))

from agent_rig import V1, Release, Rig, open_rig, tflite  # noqa: E402
from service_check import require_service

from device_agent.download import DownloadOptions, download, verify_file  # noqa: E402

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

MiB = 1024 * 1024
RUNS = 3
VERIFY_GOAL = 1.15
DOWNLOAD_GOAL = 1.5
MEMORY_GOAL = 16 * MiB
SAMPLE_INTERVAL = 0.005


@functools.cache
def big() -> Release:
    """The 100 MiB model (built on first use, not when the module is collected)."""
    return Release("9.0.0", 9, tflite(b"big", 100 * MiB))


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, django_db_setup: Any, django_db_blocker: Any
) -> Iterator[Rig]:
    with open_rig(tmp_path_factory.mktemp("bench-agent"), django_db_blocker, (big(),)) as built:
        yield built


@pytest.fixture(scope="module")
def http_root(rig: Rig) -> Iterator[str]:
    """`python -m http.server` (a threaded http.server) over the artifacts, in its own
    process so that it shares no GIL with the download() under test."""
    from mqtt_broker import free_port, wait_for_port

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(rig.targets),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sha = "sha_ni" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "?"
    return (
        f"{os.cpu_count()} CPU ({cpu}, SHA extensions: {sha}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}"
    )


def _interleaved(
    measured: Callable[[], None], reference: Callable[[], None]
) -> tuple[float, float]:
    """Medians over RUNS alternating runs (reference first), after one warm-up of each."""
    reference()
    measured()
    times: dict[str, list[float]] = {"measured": [], "reference": []}
    for _ in range(RUNS):
        for name, fn in (("reference", reference), ("measured", measured)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(
        f"    runs: measured {[f'{t:.3f}' for t in times['measured']]}, "
        f"reference {[f'{t:.3f}' for t in times['reference']]}"
    )
    return statistics.median(times["measured"]), statistics.median(times["reference"])


def _big_file(rig: Rig) -> Path:
    directory, _, filename = big().path.rpartition("/")
    return rig.targets / directory / f"{big().sha256}.{filename}"


def test_verification_against_openssl(rig: Rig) -> None:
    path = _big_file(rig)
    openssl = shutil.which("openssl")
    require_service(openssl is not None, "openssl", "apt-get install openssl")
    assert openssl is not None

    def reference() -> None:
        out = subprocess.run(
            [openssl, "dgst", "-sha256", str(path)], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip().endswith(big().sha256)

    def measured() -> None:
        verify_file(path, sha256=big().sha256, length=big().length)

    agent, ssl = _interleaved(measured, reference)
    print(
        f"\n[agent verify] {_machine()}\n"
        f"  verify_file {agent:.3f} s, openssl dgst -sha256 {ssl:.3f} s (100 MiB, page cache)\n"
        f"  verify/openssl time ratio = {agent / ssl:.2f} (goal <= {VERIFY_GOAL})"
    )


def test_download_against_curl(rig: Rig, http_root: str, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    require_service(curl is not None, "curl", "apt-get install curl")
    assert curl is not None
    directory, _, filename = big().path.rpartition("/")
    url = f"{http_root}/{directory}/{big().sha256}.{filename}"
    part = tmp_path / f"{big().sha256}.part"
    copy = tmp_path / "curl.out"
    pool = urllib3.PoolManager()

    def reference() -> None:
        copy.unlink(missing_ok=True)
        subprocess.run([curl, "-sS", "-o", str(copy), url], check=True)
        assert copy.stat().st_size == big().length

    def measured() -> None:
        part.unlink(missing_ok=True)
        download(
            url,
            part,
            sha256=big().sha256,
            length=big().length,
            options=DownloadOptions(deadline_s=600.0),
            pool=pool,
        )

    def durable_reference() -> None:
        # the same durability as the agent's part file: curl -o, then fsync the copy
        reference()
        fd = os.open(copy, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    agent, plain = _interleaved(measured, reference)
    assert hashlib.sha256(part.read_bytes()).hexdigest() == big().sha256
    agent_again, durable = _interleaved(measured, durable_reference)
    print(
        f"\n[agent download] {_machine()}\n"
        f"  download() {agent:.3f} s (hashing + fsync), curl -o {plain:.3f} s "
        f"(100 MiB, loopback, threaded http.server)\n"
        f"  download/curl time ratio = {agent / plain:.2f} (goal <= {DOWNLOAD_GOAL})\n"
        f"  download() {agent_again:.3f} s vs curl -o + fsync {durable:.3f} s: "
        f"ratio {agent_again / durable:.2f} (same durability, for information)"
    )


class RssSampler:
    """Polls a process's RSS (and its children's, reported apart) in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.child_peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.process.memory_info().rss))
                for child in self.process.children():
                    self.child_peak = max(self.child_peak, child.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(SAMPLE_INTERVAL)

    def peak(self, start: float, end: float = float("inf")) -> int:
        return max(rss for t, rss in self.samples if start <= t <= end)

    def __enter__(self) -> "RssSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_agent_rss_stays_flat_during_a_100_mib_update(rig: Rig) -> None:
    with rig.case("bench-rss", trial_deadline_s=120.0) as agent:
        agent.start()
        agent.wait_for(lambda: agent.states(), "the agent to come online")
        assert agent.process is not None
        with RssSampler(agent.process.pid) as sampler:
            # idle: connected, state published, nothing to do
            time.sleep(1.0)
            idle_start = time.monotonic() - 0.8
            idle = max(rss for t, rss in sampler.samples if t >= idle_start)
            started = time.monotonic()
            agent.send(agent.envelope(2, [agent.target(big())]))
            agent.wait_event(2, ("committed",), timeout=300)
            agent.wait_settled(2, timeout=60)
            finished = time.monotonic()
        peak = sampler.peak(started, finished)
        events = {e.phase: e.ts for e in agent.events() if e.seq == 2}
        download_s = (events["downloaded"] - events["accepted"]).total_seconds()
        agent.assert_runs(big(), "b")
        assert agent.current_sha256() != V1.sha256

    growth = peak - idle
    print(
        f"\n[agent RSS] {_machine()}\n"
        f"  update of 100 MiB: {finished - started:.2f} s end to end "
        f"(accepted -> downloaded {download_s:.2f} s), {len(sampler.samples)} samples\n"
        f"  agent RSS idle {idle / MiB:.1f} MiB, peak during the update {peak / MiB:.1f} MiB, "
        f"trial child peak {sampler.child_peak / MiB:.1f} MiB\n"
        f"  agent peak RSS growth = {growth / MiB:.1f} MiB (goal <= {MEMORY_GOAL // MiB})"
    )
    assert growth <= MEMORY_GOAL
