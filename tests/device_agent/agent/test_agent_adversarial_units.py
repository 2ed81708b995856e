"""In-process checks of the defences the adversarial and fault suites rely on: the
overall download deadline, the TUF fetch deadline, the part's background writeback,
the MQTT flush that keeps final events, and the test hooks staying inert."""

import hashlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from agent_http import Behaviour, file_server
from tuf.api import exceptions as tuf_exceptions

from device_agent import download as download_module
from device_agent.download import DownloadError, DownloadOptions, download
from device_agent.testhooks import agent_clock, crashpoint
from device_agent.tuf_fetch import DeadlineFetcher

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
REPO = Path(__file__).resolve().parents[3]


def test_a_trickle_ends_at_the_download_deadline(tmp_path: Path) -> None:
    # 1 kB every 50 ms never stalls for stall_s, and would take 15 s
    behaviour = Behaviour(data=DATA, throttle=(1024, 0.05))
    part = tmp_path / f"{SHA}.part"
    started = time.monotonic()
    options = DownloadOptions(stall_s=2.0, deadline_s=0.5, sleep=lambda s: None)
    with file_server(behaviour) as url, pytest.raises(DownloadError) as e:
        download(url, part, sha256=SHA, length=len(DATA), options=options)
    assert e.value.code == "download_timeout"
    assert "deadline" in e.value.detail
    assert time.monotonic() - started < 3
    assert 0 < part.stat().st_size < len(DATA)  # kept for a later resume


def test_the_deadline_also_bounds_the_backoff(tmp_path: Path) -> None:
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        time.sleep(s)

    options = DownloadOptions(
        attempts=100,
        backoff_s=30.0,
        deadline_s=0.3,
        sleep=sleep,
    )
    with (
        file_server(Behaviour(data=DATA, fail_first=100)) as url,
        pytest.raises(DownloadError) as e,
    ):
        download(url, tmp_path / "p.part", sha256=SHA, length=len(DATA), options=options)
    assert e.value.code == "download_timeout"
    assert sleeps
    assert max(sleeps) <= 0.3


def test_without_a_deadline_a_slow_download_completes(tmp_path: Path) -> None:
    behaviour = Behaviour(data=DATA, throttle=(64 * 1024, 0.01))
    part = tmp_path / "p.part"
    with file_server(behaviour) as url:
        download(url, part, sha256=SHA, length=len(DATA), options=DownloadOptions(deadline_s=None))
    assert part.read_bytes() == DATA


def test_large_parts_are_written_back_while_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = os.urandom(3 * 1024 * 1024)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(download_module, "SYNC_EVERY", 512 * 1024)

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    part = tmp_path / "big.part"
    with file_server(Behaviour(data=big, throttle=(256 * 1024, 0.01))) as url:
        download(
            url,
            part,
            sha256=hashlib.sha256(big).hexdigest(),
            length=len(big),
            options=DownloadOptions(chunk=256 * 1024),
        )
    assert part.read_bytes() == big
    assert synced  # the helper thread ran, and was joined before the file was closed


def test_tuf_fetches_end_at_their_deadline() -> None:
    # a metadata server dripping 8 bytes every 50 ms (no stall, 1.9 s for 300 bytes)
    with file_server(Behaviour(data=b"x" * 300, throttle=(8, 0.05))) as url:
        fetcher = DeadlineFetcher(socket_timeout_s=2.0, deadline_s=0.5, app_user_agent="t")
        started = time.monotonic()
        with pytest.raises(tuf_exceptions.SlowRetrievalError):
            fetcher.download_bytes(url, 16384)
        assert time.monotonic() - started < 1.5
    # an honest server is fetched whole
    fast = DeadlineFetcher(socket_timeout_s=2.0, deadline_s=5.0, app_user_agent="t")
    with file_server(Behaviour(data=b"y" * 100_000)) as url:
        assert fast.download_bytes(url, 200_000) == b"y" * 100_000


def test_tuf_fetch_size_limit_still_applies() -> None:
    with file_server(Behaviour(data=b"z" * 50_000)) as url:
        fetcher = DeadlineFetcher(socket_timeout_s=2.0, deadline_s=5.0, app_user_agent="t")
        with pytest.raises(tuf_exceptions.DownloadLengthMismatchError):
            fetcher.download_bytes(url, 16384)


def test_crash_points_are_inert_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_AGENT_CRASH_AT", raising=False)
    crashpoint("journal:idle")
    monkeypatch.setenv("FLEET_AGENT_CRASH_AT", "journal:trial")
    crashpoint("journal:idle")
    monkeypatch.setenv("FLEET_AGENT_CRASH_AT", "download:bytes@1000")
    crashpoint("download:bytes", 999)
    crashpoint("download:bytes")
    # still alive


@pytest.mark.parametrize(("spec", "killed"), [("p", True), ("p@10", True), ("p@11", False)])
def test_a_named_crash_point_sigkills_the_process(spec: str, killed: bool) -> None:
    code = "from device_agent.testhooks import crashpoint; crashpoint('p', 10)"
    env = {**os.environ, "FLEET_AGENT_CRASH_AT": spec, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=30, check=False)
    assert done.returncode == (-9 if killed else 0)


def test_the_clock_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_AGENT_CLOCK_SKEW_S", raising=False)
    assert abs((agent_clock()() - datetime.now(UTC)).total_seconds()) < 1
    monkeypatch.setenv("FLEET_AGENT_CLOCK_SKEW_S", "-86400")
    assert abs((agent_clock()() - datetime.now(UTC)).total_seconds() + 86400) < 1


def test_mqtt_flush_waits_for_the_broker(mosquitto: Any) -> None:
    # given a link whose broker is not there yet: the message waits in paho
    from mqtt_broker import free_port

    from device_agent.mqtt import MqttLink
    from device_agent.protocol.topics import Channel

    offline = MqttLink(
        broker_url=f"mqtt://127.0.0.1:{free_port()}",
        device_id="dev-flush",
        tls=None,
        on_desired=lambda p: None,
    )
    offline.start()
    try:
        offline.publish(Channel.EVENTS, b'{"v": 1}')
        assert offline.flush(0.3) is False
    finally:
        offline.stop()

    # given a connected link, flush returns once the broker acknowledged
    online = MqttLink(
        broker_url=f"mqtt://127.0.0.1:{mosquitto.port}",
        device_id="dev-flush",
        tls=None,
        on_desired=lambda p: None,
    )
    online.start()
    try:
        assert online.connected.wait(10)
        for _ in range(20):
            online.publish(Channel.EVENTS, b'{"v": 1}')
        assert online.flush(10) is True
        assert online.flush(0) is True
    finally:
        online.stop()
