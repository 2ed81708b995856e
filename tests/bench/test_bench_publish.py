"""Publish benchmark (issue 2): a 100 MiB artifact published through the API against a
plain streaming upload of the same bytes to the same server process.

Prints the time ratio (goal <= 1.5) and the server worker's peak RSS growth (goal
<= 64 MiB). Only the memory growth and correctness are asserted, never the time ratio:
the machine is noisy. Run with ``pytest tests/bench -m bench -s``; see docs/benchmarks.md.
"""

import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from ota import cli
from ota.fleetctl import http as fleetctl_http

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
ARTIFACT_BYTES = 100 * MiB
RUNS = 3
RATIO_GOAL = 1.5
MEMORY_GOAL = 64 * MiB
SAMPLE_INTERVAL = 0.02
HARDWARE = "linux-x86_64-fp32"
# Settings the server must not inherit from the developer's or CI's environment.
SCRUBBED_PREFIXES = ("FLEET_", "DJANGO_", "DATABASE_URL", "CELERY_", "AWS_")


@dataclass
class Server:
    url: str
    token: str
    release_key: Path
    master: psutil.Process
    worker: psutil.Process
    log: Path


def _server_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env.update(
        DJANGO_SETTINGS_MODULE="fleet.settings",
        FLEET_DATA_DIR=str(data_dir),
        # Django's upload temp files (and the sink's) on the artifact directory's file
        # system, so a publish stores its upload with a rename, as a production setup would.
        FLEET_UPLOAD_TEMP_DIR=str(data_dir / "tmp"),
        FLEET_LOG_LEVEL="WARNING",
    )
    return env


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited {proc.returncode}:\n{_log_tail(log)}")
        try:
            response = requests.get(f"{url}/healthz", timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.05)
    pytest.fail(f"the server did not become healthy in 60 s ({last}):\n{_log_tail(log)}")


def _only_worker(master: psutil.Process) -> psutil.Process:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = master.children()
        if len(children) == 1:
            return children[0]
        time.sleep(0.05)
    pytest.fail(f"expected one gunicorn worker, found {len(master.children())}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    data_dir = tmp_path / "server"
    (data_dir / "tmp").mkdir(parents=True)
    env = _server_env(data_dir)
    manage = [sys.executable, str(REPO / "manage.py")]
    _run([*manage, "migrate", "--no-input", "-v", "0"], env)
    _run([*manage, "tuf_init"], env)
    key_dir = tmp_path / "ci-key"
    _run([str(Path(sys.executable).parent / "fleetctl"), "keygen", "--out", str(key_dir)], env)
    _run([*manage, "model_register", "bench", "--release-key", str(key_dir / "release.pub")], env)
    token = _run(
        [*manage, "api_token_create", "--user", "ci", "--scope", "publish", "--model", "*"], env
    ).strip()

    # gunicorn serves a socket we bound: no race for a free port.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"fd://{listener.fileno()}",
                "--workers",
                "1",
                "--worker-class",
                "sync",
                "--timeout",
                "600",
                "--pythonpath",
                str(HERE),
                "bench_server:application",
            ],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=[listener.fileno()],
        )
    listener.close()
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, url, log)
        master = psutil.Process(proc.pid)
        yield Server(url, token, key_dir / "release.key", master, _only_worker(master), log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


class RssSampler:
    """Polls one process's RSS in a background thread; peaks are read per time window."""

    def __init__(self, process: psutil.Process, interval: float = SAMPLE_INTERVAL) -> None:
        self.process = process
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        self.samples.append((time.perf_counter(), self.process.memory_info().rss))

    def _loop(self) -> None:
        try:
            while True:
                self._sample()
                if self._stop.wait(self.interval):
                    return
        except psutil.Error as exc:
            self.error = exc

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


@dataclass
class Side:
    """One side's runs: wall seconds, and CPU seconds of the server worker and the client."""

    seconds: list[float] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)

    @contextmanager
    def run(self, worker: psutil.Process) -> Iterator[None]:
        server_cpu, client_cpu = _cpu(worker), time.process_time()
        started = time.perf_counter()
        yield
        ended = time.perf_counter()
        self.seconds.append(ended - started)
        self.windows.append((started, ended))
        self.server_cpu.append(_cpu(worker) - server_cpu)
        self.client_cpu.append(time.process_time() - client_cpu)

    def median(self) -> float:
        return statistics.median(self.seconds)

    def line(self, label: str) -> str:
        runs = " ".join(f"{s:.2f}" for s in self.seconds)
        return (
            f"  {label:<42}{self.median():6.2f} s  [{runs}]  CPU s: server "
            f"{statistics.median(self.server_cpu):.2f}, client "
            f"{statistics.median(self.client_cpu):.2f}"
        )


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _make_artifact(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // MiB):
            chunk = os.urandom(MiB)
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def _plain_upload(server: Server, path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        response = requests.put(f"{server.url}/bench/sink", data=f, timeout=(10, 600))
    assert response.status_code == 200, f"{response.text[:500]}\n{_log_tail(server.log)}"
    return dict(response.json())


def _publish(
    server: Server, path: Path, version: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    rc = cli.main(
        [
            "publish",
            "--json",
            str(path),
            "--name",
            "bench",
            "--version",
            version,
            "--hardware",
            HARDWARE,
            "--format",
            "onnx",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, f"{err}\n{_log_tail(server.log)}"
    return dict(json.loads(out))


def _download_sha256(server: Server, artifact_id: int) -> str:
    digest = hashlib.sha256()
    with requests.get(
        f"{server.url}/api/v1/artifacts/{artifact_id}/download",
        headers={"Authorization": f"Bearer {server.token}"},
        stream=True,
        timeout=(10, 600),
    ) as response:
        assert response.status_code == 200, response.text[:500]
        for chunk in response.iter_content(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


@pytest.mark.timeout(900)
def test_publish_vs_plain_streaming_upload(
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a 100 MiB artifact, CI's environment, and a server warmed up by small uploads
    artifact = tmp_path / "model.onnx"
    sha256 = _make_artifact(artifact, ARTIFACT_BYTES)
    monkeypatch.setenv("FLEET_URL", server.url)
    monkeypatch.setenv("FLEET_TOKEN", server.token)
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(server.release_key))
    upload_seconds: list[float] = []
    client_publish = fleetctl_http.Client.publish

    def timed_publish(self: fleetctl_http.Client, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return client_publish(self, *args, **kwargs)
        finally:
            upload_seconds.append(time.perf_counter() - started)

    monkeypatch.setattr(fleetctl_http.Client, "publish", timed_publish)
    small = tmp_path / "warmup" / "model.onnx"
    small.parent.mkdir()
    small.write_bytes(os.urandom(4096))
    cold_rss = server.worker.memory_info().rss
    _plain_upload(server, small)
    _publish(server, small, "0.0.1", capsys)
    upload_seconds.clear()
    baseline = server.worker.memory_info().rss

    # when each side uploads the same bytes RUNS times, interleaved
    plain, api = Side(), Side()
    published: list[dict[str, Any]] = []
    with RssSampler(server.worker) as sampler:
        for run in range(1, RUNS + 1):
            with plain.run(server.worker):
                sink = _plain_upload(server, artifact)
            assert sink == {"sha256": sha256, "length": ARTIFACT_BYTES}
            with api.run(server.worker):
                published.append(_publish(server, artifact, f"1.0.{run}", capsys))
    assert sampler.error is None, f"lost the worker process: {sampler.error}"
    assert server.master.children() == [server.worker], "the gunicorn worker was replaced"

    ratio = api.median() / plain.median()
    plain_growth = max(sampler.peak(a, b) for a, b in plain.windows) - baseline
    api_growth = max(sampler.peak(a, b) for a, b in api.windows) - baseline
    growth = sampler.peak() - baseline
    with capsys.disabled():
        print(
            f"\npublish benchmark: {ARTIFACT_BYTES // MiB} MiB artifact, {RUNS} interleaved runs"
            f" per side, {os.cpu_count()} CPUs, medians\n"
            f"{plain.line('plain streaming upload (PUT /bench/sink):')}\n"
            f"{api.line('fleetctl publish (whole command):')}\n"
            f"  {'  of which the publish request:':<42}"
            f"{statistics.median(upload_seconds):6.2f} s"
            f"  [{' '.join(f'{s:.2f}' for s in upload_seconds)}]\n"
            f"publish/plain-upload time ratio = {ratio:.2f} (goal <= {RATIO_GOAL})\n"
            f"  worker RSS: cold {_mib(cold_rss)}, after warm-up {_mib(baseline)}, "
            f"peak {_mib(sampler.peak())} ({len(sampler.samples)} samples)\n"
            f"  peak growth during plain uploads {_mib(plain_growth)}, "
            f"during publishes {_mib(api_growth)}\n"
            f"server peak memory growth = {growth / MiB:.1f} MiB (goal <= {MEMORY_GOAL // MiB})"
        )

    # then every publish stored exactly the uploaded bytes, and the server streamed them
    assert [a["version"] for a in published] == [f"1.0.{n}" for n in range(1, RUNS + 1)]
    for entry in published:
        assert entry["sha256"] == sha256
        assert entry["length"] == ARTIFACT_BYTES
    assert _download_sha256(server, published[-1]["id"]) == sha256
    assert growth <= MEMORY_GOAL, f"server RSS grew {_mib(growth)} (goal <= 64 MiB)"
