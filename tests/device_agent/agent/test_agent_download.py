"""Downloads: resume with Range, retries, stalls, length and hash limits, disk space."""

import hashlib
import os
import time
import tracemalloc
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from agent_http import Behaviour, file_server

from device_agent import download as download_module
from device_agent.download import (
    DownloadError,
    DownloadOptions,
    Interrupted,
    backoff_delay,
    download,
)

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def fast(**kwargs: Any) -> DownloadOptions:
    defaults: dict[str, Any] = {"stall_s": 2.0, "attempts": 3, "sleep": lambda s: None}
    defaults.update(kwargs)
    return DownloadOptions(**defaults)


def test_downloads_and_verifies(tmp_path: Path) -> None:
    behaviour = Behaviour(data=DATA)
    part = tmp_path / f"{SHA}.part"
    seen: list[tuple[int, int]] = []
    with file_server(behaviour) as url:
        got = download(
            url,
            part,
            sha256=SHA,
            length=len(DATA),
            options=fast(),
            progress=lambda d, t: seen.append((d, t)),
        )
    assert got == part
    assert part.read_bytes() == DATA
    assert "range" not in behaviour.requests[0]
    # throttled to about once a second, always ending with the total
    assert seen[-1] == (len(DATA), len(DATA))
    assert len(seen) <= 3


def test_resumes_an_existing_part_with_a_range_request(tmp_path: Path) -> None:
    # given the first 100 kB from an earlier run of the agent
    part = tmp_path / f"{SHA}.part"
    part.write_bytes(DATA[:100_000])
    behaviour = Behaviour(data=DATA)

    with file_server(behaviour) as url:
        download(url, part, sha256=SHA, length=len(DATA), options=fast())

    assert behaviour.requests[0]["range"] == "bytes=100000-"
    assert part.read_bytes() == DATA


def test_resumes_within_one_run_after_the_connection_drops(tmp_path: Path) -> None:
    behaviour = Behaviour(data=DATA, cut_after=120_000)
    part = tmp_path / f"{SHA}.part"
    with file_server(behaviour) as url:
        # the server cuts every response after 120 kB: three requests finish the file
        download(url, part, sha256=SHA, length=len(DATA), options=fast(attempts=2))
    assert [r.get("range") for r in behaviour.requests] == [
        None,
        "bytes=120000-",
        "bytes=240000-",
    ]
    assert part.read_bytes() == DATA


def test_a_server_ignoring_range_restarts_the_part(tmp_path: Path) -> None:
    part = tmp_path / f"{SHA}.part"
    part.write_bytes(DATA[:1000])
    with file_server(Behaviour(data=DATA, honour_range=False)) as url:
        download(url, part, sha256=SHA, length=len(DATA), options=fast())
    assert part.read_bytes() == DATA


def test_a_damaged_part_is_restarted_once_from_zero(tmp_path: Path) -> None:
    # given a part whose bytes are not the file's (power loss left garbage)
    part = tmp_path / f"{SHA}.part"
    part.write_bytes(b"\0" * 100_000)
    behaviour = Behaviour(data=DATA)
    with file_server(behaviour) as url:
        download(url, part, sha256=SHA, length=len(DATA), options=fast())
    assert [r.get("range") for r in behaviour.requests] == ["bytes=100000-", None]
    assert part.read_bytes() == DATA


def test_a_resumed_transfer_that_does_not_verify_restarts_once_from_zero(
    tmp_path: Path,
) -> None:
    # given a server that drops the first response, then answers the Range request
    # with a 206 whose body is not what its Content-Range says
    part = tmp_path / f"{SHA}.part"
    behaviour = Behaviour(data=DATA, cut_after=100_000, cut_times=1, bad_range_times=1)
    with file_server(behaviour) as url:
        download(url, part, sha256=SHA, length=len(DATA), options=fast())
    # then the agent started over from byte zero once, and has the file
    assert [r.get("range") for r in behaviour.requests] == [None, "bytes=100000-", None]
    assert part.read_bytes() == DATA


def test_a_second_mismatch_after_the_restart_is_a_hash_mismatch(tmp_path: Path) -> None:
    part = tmp_path / f"{SHA}.part"
    # (every response is cut half way: the bad Range body then ends the file exactly)
    behaviour = Behaviour(data=DATA, cut_after=150_000, bad_range_times=2)
    with file_server(behaviour) as url, pytest.raises(DownloadError) as caught:
        download(url, part, sha256=SHA, length=len(DATA), options=fast())
    assert caught.value.code == "hash_mismatch"
    assert [r.get("range") for r in behaviour.requests] == [
        None,
        "bytes=150000-",
        None,
        "bytes=150000-",
    ]
    assert not part.exists()


def test_a_drip_below_the_minimum_rate_fails_early_as_download_timeout(
    tmp_path: Path,
) -> None:
    # given a server that drips (never silent for stall_s, so no stall)
    part = tmp_path / f"{SHA}.part"
    behaviour = Behaviour(data=DATA, throttle=(20, 0.05))  # 400 B/s
    options = fast(min_rate_bps=2000, min_rate_window_s=0.5, attempts=2, deadline_s=3600)
    started = time.monotonic()
    with file_server(behaviour) as url, pytest.raises(DownloadError) as caught:
        download(url, part, sha256=SHA, length=len(DATA), options=options)
    # then each attempt ends after one window, and two of them are a download_timeout
    # even though each made progress
    assert caught.value.code == "download_timeout"
    assert "below the minimum" in caught.value.detail
    assert len(behaviour.requests) == 2
    assert time.monotonic() - started < 10
    assert 0 < part.stat().st_size < len(DATA)  # kept for a later resume


def test_a_transfer_above_the_minimum_rate_is_not_affected(tmp_path: Path) -> None:
    part = tmp_path / f"{SHA}.part"
    behaviour = Behaviour(data=DATA, throttle=(50_000, 0.1))  # 500 kB/s, 0.6 s
    options = fast(min_rate_bps=100_000, min_rate_window_s=0.2)
    with file_server(behaviour) as url:
        download(url, part, sha256=SHA, length=len(DATA), options=options)
    assert len(behaviour.requests) == 1
    assert part.read_bytes() == DATA


def test_retries_server_errors_with_backoff(tmp_path: Path) -> None:
    sleeps: list[float] = []
    behaviour = Behaviour(data=DATA, fail_first=2)
    with file_server(behaviour) as url:
        download(
            url,
            tmp_path / "p.part",
            sha256=SHA,
            length=len(DATA),
            options=fast(attempts=3, backoff_s=1.0, sleep=sleeps.append),
        )
    assert len(behaviour.requests) == 3
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0
    assert 1.0 <= sleeps[1] <= 2.0


def test_gives_up_after_the_attempts(tmp_path: Path) -> None:
    with file_server(Behaviour(data=DATA, fail_first=10)) as url, pytest.raises(DownloadError) as e:
        download(url, tmp_path / "p.part", sha256=SHA, length=len(DATA), options=fast(attempts=3))
    assert e.value.code == "download_failed"


def test_a_404_is_not_retried(tmp_path: Path) -> None:
    behaviour = Behaviour(status=404)
    with file_server(behaviour) as url, pytest.raises(DownloadError) as e:
        download(url, tmp_path / "p.part", sha256=SHA, length=len(DATA), options=fast())
    assert e.value.code == "download_failed"
    assert len(behaviour.requests) == 1


def test_a_stalled_connection_is_a_download_timeout(tmp_path: Path) -> None:
    behaviour = Behaviour(data=DATA, stall_after=0, stall_s=2.0)
    part = tmp_path / f"{SHA}.part"
    with file_server(behaviour) as url, pytest.raises(DownloadError) as e:
        download(url, part, sha256=SHA, length=len(DATA), options=fast(stall_s=0.3, attempts=2))
    assert e.value.code == "download_timeout"
    assert len(behaviour.requests) == 2


def test_bytes_before_a_stall_are_kept_and_resumed(tmp_path: Path) -> None:
    behaviour = Behaviour(data=DATA, stall_after=1000, stall_s=2.0, stall_times=1)
    part = tmp_path / f"{SHA}.part"
    with file_server(behaviour) as url:
        download(url, part, sha256=SHA, length=len(DATA), options=fast(stall_s=0.3))
    assert [r.get("range") for r in behaviour.requests] == [None, "bytes=1000-"]
    assert part.read_bytes() == DATA


def test_refuses_to_write_past_the_signed_length(tmp_path: Path) -> None:
    part = tmp_path / f"{SHA}.part"
    with (
        file_server(Behaviour(data=DATA, extra=b"x" * 70_000)) as url,
        pytest.raises(DownloadError) as e,
    ):
        download(url, part, sha256=SHA, length=len(DATA), options=fast())
    assert e.value.code == "length_exceeded"
    assert part.stat().st_size <= len(DATA)


def test_wrong_bytes_are_a_hash_mismatch_and_dropped(tmp_path: Path) -> None:
    part = tmp_path / "p.part"
    other = os.urandom(len(DATA))
    with file_server(Behaviour(data=other)) as url, pytest.raises(DownloadError) as e:
        download(url, part, sha256=SHA, length=len(DATA), options=fast())
    assert e.value.code == "hash_mismatch"
    assert not part.exists()


def test_checks_free_disk_space_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda p: usage(10**9, 0, 1000))
    behaviour = Behaviour(data=DATA)
    with file_server(behaviour) as url, pytest.raises(DownloadError) as e:
        download(url, tmp_path / "p.part", sha256=SHA, length=len(DATA), options=fast())
    assert e.value.code == "disk_full"
    assert behaviour.requests == []


def test_stop_interrupts_and_keeps_the_part(tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    part = tmp_path / "p.part"
    with file_server(Behaviour(data=DATA)) as url, pytest.raises(Interrupted):
        download(url, part, sha256=SHA, length=len(DATA), options=fast(stop=stop, chunk=1024))
    assert 0 < part.stat().st_size < len(DATA)


def test_memory_stays_flat_in_artifact_size(tmp_path: Path) -> None:
    big = os.urandom(8 * 1024 * 1024)
    sha = hashlib.sha256(big).hexdigest()
    with file_server(Behaviour(data=big)) as url:
        tracemalloc.start()
        download(url, tmp_path / "big.part", sha256=sha, length=len(big), options=fast())
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # the server thread's copy of its slice is traced too; the downloader adds chunks only
    assert peak < len(big) + 2 * 1024 * 1024


def test_backoff_grows_exponentially_with_jitter() -> None:
    for n in range(1, 8):
        delay = backoff_delay(n, 1.0, 30.0)
        cap = min(30.0, 2 ** (n - 1))
        assert cap / 2 <= delay <= cap
