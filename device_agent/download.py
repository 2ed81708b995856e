"""Resumable, verified, memory-flat artifact downloads (docs/architecture.md).

Bytes stream into `downloads/<sha256>.part` through a fixed-size buffer while a
SHA-256 is computed incrementally. An existing part (from an interrupted attempt or
an earlier run of the agent) is re-hashed and resumed with an HTTP Range request; a
server that answers 200 instead of 206 restarts the part. The signed length is a
hard limit: a server sending more is refused (`length_exceeded`) before the excess
is written. Failures are retried with exponential backoff and jitter; a connection
that delivers no byte for `stall_s` seconds counts as a failed attempt, and running
out of attempts that way is `download_timeout`. So is running past `deadline_s`, the
bound on the whole download: a server that trickles a byte now and then never stalls,
so without it a slow drip would hold the agent forever. Before that, an attempt that
receives less than `min_rate_bps` over `min_rate_window_s` ends as a failed attempt
(even though it made progress), so a drip fails with `download_timeout` after
`attempts` windows rather than at the deadline.
"""

import errno
import hashlib
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import urllib3

from device_agent.protocol.errors import ErrorCode
from device_agent.testhooks import crashpoint

log = logging.getLogger(__name__)

# One socket read: read1 returns what has arrived, up to this; large reads mean fewer
# system calls and copies per artifact.
CHUNK = 1024 * 1024
HASH_CHUNK = 1024 * 1024
# Written bytes between two background fdatasync calls (see _Writeback).
SYNC_EVERY = 8 * 1024 * 1024
PROGRESS_INTERVAL_S = 1.0
# 4xx answers worth retrying: the server may recover.
RETRYABLE_4XX = frozenset({408, 425, 429})


class DownloadError(Exception):
    """A download that will not complete; `code` is the event's error code."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class Interrupted(Exception):
    """The agent is stopping; the part stays for the next run to resume."""


class _Retry(Exception):
    def __init__(self, code: ErrorCode, detail: str, *, slow: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.slow = slow  # too slow: a failure even if some bytes arrived


@dataclass(kw_only=True)
class DownloadOptions:
    stall_s: float = 30.0
    attempts: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    reserve_bytes: int = 0
    # The whole download, across attempts and backoff; None: no bound.
    deadline_s: float | None = None
    # An attempt must average at least this many bytes/s over each window (0: no rule).
    min_rate_bps: float = 0.0
    min_rate_window_s: float = 60.0
    chunk: int = CHUNK
    user_agent: str = "fleet-agent"
    ca_certs: str | None = None
    sleep: Callable[[float], None] = time.sleep
    stop: Callable[[], bool] = field(default=lambda: False)


ProgressCallback = Callable[[int, int], None]


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: in [d/2, d] for d = min(cap, base * 2**(n-1))."""
    delay = min(cap, base * (2 ** max(0, failures - 1)))
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not crypto


def hash_file(path: Path, chunk: int = HASH_CHUNK) -> tuple["hashlib._Hash", int]:
    """The sha256 state and size of `path`, read through one reused buffer."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            size += n
    return digest, size


def verify_file(path: Path, *, sha256: str, length: int) -> None:
    """Check that `path` holds exactly the signed bytes (streaming, memory-flat).

    Raises DownloadError: length_exceeded (longer than signed), hash_mismatch (shorter,
    or other bytes), download_failed (the file is gone).
    """
    try:
        digest, size = hash_file(path)
    except FileNotFoundError:
        raise DownloadError(ErrorCode.DOWNLOAD_FAILED, f"{path} vanished") from None
    if size != length:
        code = ErrorCode.LENGTH_EXCEEDED if size > length else ErrorCode.HASH_MISMATCH
        raise DownloadError(code, f"{size} bytes, signed length {length}")
    if digest.hexdigest() != sha256:
        raise DownloadError(ErrorCode.HASH_MISMATCH, "sha256 differs from the signed one")


def _check_disk(directory: Path, needed: int, reserve: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed + reserve:
        raise DownloadError(
            ErrorCode.DISK_FULL,
            f"{needed} bytes needed (+{reserve} reserve), {free} free in {directory}",
        )


class _Progress:
    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.last = 0.0

    def __call__(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.callback and (force or now - self.last >= PROGRESS_INTERVAL_S):
            self.last = now
            self.callback(done, self.total)


@dataclass
class _PartState:
    """What is on disk so far; mutated as bytes arrive, so a failed attempt keeps them.

    `resumed`: the bytes were not all written by one response from byte zero (a part
    kept from before, or a Range response appended to it), so a hash mismatch may be a
    bad join rather than a bad file.
    """

    digest: "hashlib._Hash"
    have: int
    resumed: bool = False

    def restart(self) -> None:
        self.digest, self.have, self.resumed = hashlib.sha256(), 0, False


def download(
    url: str,
    part: Path,
    *,
    sha256: str,
    length: int,
    options: DownloadOptions | None = None,
    progress: ProgressCallback | None = None,
    pool: urllib3.PoolManager | None = None,
) -> Path:
    """Download `url` into `part` until it holds exactly `length` bytes hashing to `sha256`.

    Returns `part`. Raises DownloadError (download_failed, download_timeout,
    length_exceeded, hash_mismatch, disk_full) or Interrupted when `options.stop()`.
    A hash mismatch deletes the part; other failures keep it for a later resume.
    """
    opts = options or DownloadOptions()
    part.parent.mkdir(parents=True, exist_ok=True)
    if part.exists() and (part.stat().st_nlink > 1 or part.stat().st_size > length):
        # Linked into a slot (not ours to append to) or longer than signed: start over.
        part.unlink()
    state = _PartState(*hash_file(part), resumed=True) if part.exists() else None
    state = state or _PartState(hashlib.sha256(), 0)
    _check_disk(part.parent, length - state.have, opts.reserve_bytes)
    report = _Progress(progress, length)
    http = pool or urllib3.PoolManager(ca_certs=opts.ca_certs)
    restarted = False
    failures = 0
    deadline = _Deadline(opts.deadline_s, url)
    while True:
        if state.have == length:
            if state.digest.hexdigest() == sha256:
                report(state.have, force=True)
                return part
            part.unlink()
            if state.resumed and not restarted:
                # A part kept from before was stale or damaged (power loss), or a Range
                # response did not hold what its Content-Range said: one clean restart.
                log.warning("resumed download of %s did not verify; restarting", url)
                state.restart()
                restarted = True
                continue
            raise DownloadError(ErrorCode.HASH_MISMATCH, f"{url}: sha256 is not {sha256}")
        if opts.stop():
            raise Interrupted
        deadline.check()
        before = state.have
        try:
            _attempt(http, url, part, state, length, opts, report, deadline)
        except _Retry as retry:
            failures = 1 if state.have > before and not retry.slow else failures + 1
            if failures >= opts.attempts:
                raise DownloadError(
                    retry.code, f"{retry.detail} (after {failures} attempts)"
                ) from None
            delay = backoff_delay(failures, opts.backoff_s, opts.backoff_max_s)
            log.info("download of %s failed (%s); retrying in %.1fs", url, retry.detail, delay)
            opts.sleep(deadline.bound(delay))


class _Deadline:
    """The bound on a whole download (DownloadOptions.deadline_s)."""

    def __init__(self, seconds: float | None, url: str) -> None:
        self.seconds = seconds
        self.url = url
        self.at = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def check(self) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise DownloadError(
                ErrorCode.DOWNLOAD_TIMEOUT,
                f"{self.url}: not downloaded within the {self.seconds:g}s deadline",
            )

    def bound(self, seconds: float) -> float:
        """`seconds`, cut to what is left (at least a little, so check() then fires)."""
        remaining = self.remaining()
        return seconds if remaining is None else max(0.01, min(seconds, remaining))


class _Writeback:
    """fdatasync the part from a helper thread every SYNC_EVERY bytes.

    The disk then writes back while more bytes arrive, instead of all at once in the
    final fsync (long on a slow disk such as an SD card), and a power
    cut mid-download leaves a durable prefix to resume from. Errors are left to the
    final fsync, which still runs and reports them.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.unsynced = 0
        self.wake = threading.Event()
        self.closing = False
        self.thread: threading.Thread | None = None

    def wrote(self, n: int, flush: Callable[[], None]) -> None:
        self.unsynced += n
        if self.unsynced < SYNC_EVERY:
            return
        self.unsynced = 0
        flush()  # Python's buffer to the OS first
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="part-writeback", daemon=True)
            self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.closing:
                return
            try:
                sync(self.fd)
            except OSError:
                return

    def close(self) -> None:
        """Stop the thread before the file (and its descriptor) is closed."""
        self.closing = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join()


def _attempt(
    http: urllib3.PoolManager,
    url: str,
    part: Path,
    state: _PartState,
    length: int,
    opts: DownloadOptions,
    report: _Progress,
    deadline: _Deadline,
) -> None:
    """One request, appending to `part` and `state`; raises _Retry or DownloadError."""
    headers = {"User-Agent": opts.user_agent, "Accept-Encoding": "identity"}
    if state.have:
        headers["Range"] = f"bytes={state.have}-"
    try:
        response = http.request(
            "GET",
            url,
            headers=headers,
            preload_content=False,
            redirect=True,
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, redirect=5),
            timeout=urllib3.Timeout(
                connect=deadline.bound(opts.stall_s), read=deadline.bound(opts.stall_s)
            ),
        )
    except urllib3.exceptions.MaxRetryError as exc:
        code = (
            ErrorCode.DOWNLOAD_TIMEOUT
            if isinstance(exc.reason, urllib3.exceptions.TimeoutError)
            else ErrorCode.DOWNLOAD_FAILED
        )
        raise _Retry(code, f"cannot fetch {url}: {exc.reason}") from None
    except urllib3.exceptions.TimeoutError:
        raise _Retry(ErrorCode.DOWNLOAD_TIMEOUT, f"{url}: no answer in {opts.stall_s}s") from None
    except urllib3.exceptions.HTTPError as exc:
        raise _Retry(ErrorCode.DOWNLOAD_FAILED, f"cannot fetch {url}: {exc}") from None
    whole = False
    try:
        _receive(response, url, part, state, length, opts, report, deadline)
        whole = True
    finally:
        if not whole:
            # Unread bytes (an error, too long, too slow): drop the connection rather
            # than leave it, still streaming, in the pool.
            response.close()
        response.release_conn()


def _receive(
    response: urllib3.BaseHTTPResponse,
    url: str,
    part: Path,
    state: _PartState,
    length: int,
    opts: DownloadOptions,
    report: _Progress,
    deadline: _Deadline,
) -> None:
    status = response.status
    if status == 416 and state.have:
        # Our part does not fit what the server has: start from scratch.
        part.unlink(missing_ok=True)
        state.restart()
        raise _Retry(ErrorCode.DOWNLOAD_FAILED, f"{url}: range not satisfiable")
    if status >= 500 or status in RETRYABLE_4XX:
        raise _Retry(ErrorCode.DOWNLOAD_FAILED, f"{url}: HTTP {status}")
    if status not in (200, 206):
        raise DownloadError(ErrorCode.DOWNLOAD_FAILED, f"{url}: HTTP {status}")
    if status == 206:
        start = _content_range_start(response.headers.get("Content-Range", ""))
        if start != state.have:
            raise _Retry(ErrorCode.DOWNLOAD_FAILED, f"{url}: range starts at {start}")
        state.resumed = state.resumed or start > 0
    elif state.have:
        log.info("%s ignored the Range request; restarting the part", url)
        state.restart()
    rate = _RateFloor(url, opts, state.have)
    with part.open("ab" if state.have else "wb") as f:
        writeback = _Writeback(f.fileno())
        try:
            for data in _chunks(response, opts.chunk):
                if state.have + len(data) > length:
                    raise DownloadError(
                        ErrorCode.LENGTH_EXCEEDED,
                        f"{url}: server sent more than the signed {length} bytes",
                    )
                f.write(data)
                writeback.wrote(len(data), f.flush)
                state.digest.update(data)
                state.have += len(data)
                crashpoint("download:bytes", state.have)
                report(state.have)
                if opts.stop():
                    raise Interrupted
                deadline.check()
                rate.check(state.have)
        except urllib3.exceptions.TimeoutError:
            raise _Retry(
                ErrorCode.DOWNLOAD_TIMEOUT, f"{url}: no data for {opts.stall_s}s"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise DownloadError(ErrorCode.DISK_FULL, str(exc)) from None
            raise _Retry(ErrorCode.DOWNLOAD_FAILED, f"{url}: {exc}") from None
        finally:
            # The part is staged by a hard link, without a copy: what the digest covers
            # must be on disk before it is used.
            writeback.close()
            f.flush()
            os.fsync(f.fileno())
    if state.have < length:
        raise _Retry(
            ErrorCode.DOWNLOAD_FAILED, f"{url}: connection closed at {state.have}/{length}"
        )


class _RateFloor:
    """DownloadOptions.min_rate_bps, judged over consecutive windows of one attempt."""

    def __init__(self, url: str, opts: DownloadOptions, have: int) -> None:
        self.url = url
        self.min_bps = opts.min_rate_bps
        self.window_s = opts.min_rate_window_s
        self.since = time.monotonic()
        self.had = have

    def check(self, have: int) -> None:
        if self.min_bps <= 0:
            return
        now = time.monotonic()
        elapsed = now - self.since
        if elapsed < self.window_s:
            return
        bps = (have - self.had) / elapsed
        if bps < self.min_bps:
            raise _Retry(
                ErrorCode.DOWNLOAD_TIMEOUT,
                f"{self.url}: {bps:.0f} B/s over {elapsed:.0f}s, below the minimum "
                f"{self.min_bps:g} B/s",
                slow=True,
            )
        self.since, self.had = now, have


def _chunks(response: urllib3.BaseHTTPResponse, chunk: int) -> Iterator[bytes]:
    # read1 hands over whatever one socket read returned, so bytes that arrived
    # before a stall or a dropped connection are written (and resumed from), not lost
    # inside a half-filled read(). urllib3 < 2.3 lacks it: fall back to stream().
    read1 = getattr(response, "read1", None)
    if read1 is None:
        yield from response.stream(chunk)
        return
    while data := read1(chunk):
        yield data


def _content_range_start(header: str) -> int | None:
    # "bytes 100-199/200"
    unit, _, rest = header.strip().partition(" ")
    first, sep, _ = rest.partition("-")
    if unit != "bytes" or not sep or not first.isascii() or not first.isdigit():
        return None
    return int(first)
