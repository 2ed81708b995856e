"""A TUF repository mirror on 127.0.0.1 that counts what it serves and misbehaves on demand.

`/tuf/<file>` is served from a metadata directory (one exported repository state),
`/tuf/targets/<path>` from a targets directory, both with HTTP Range. Rules change what
goes out: flip a byte, send more than the file, drip bytes slowly, stream forever, or
serve other bytes altogether. Every request is recorded with the bytes actually
written to the socket, so a test can measure how much a resumed download fetched.
"""

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

WRITE_CHUNK = 256 * 1024


@dataclass
class Rule:
    """How to misserve one file (the default serves it faithfully)."""

    flip_at: int | None = None  # XOR one byte at this offset with 0x01
    extra: bytes = b""  # appended beyond the file (and counted in Content-Length)
    trickle: tuple[int, float] | None = None  # (bytes, seconds) per write
    endless: bool = False  # 200 without Content-Length, then bytes until the client leaves
    replace: bytes | None = None  # serve these bytes instead of the file


@dataclass
class Served:
    """One request as the mirror saw it."""

    path: str
    range_start: int
    status: int
    sent: int = 0
    at: float = field(default_factory=time.monotonic)


class Mirror:
    """Serves `metadata_dir` under /tuf/ and `targets_dir` under /tuf/targets/."""

    def __init__(self, metadata_dir: Path, targets_dir: Path) -> None:
        self.metadata_dir = metadata_dir
        self.targets_dir = targets_dir
        self.artifact_rule = Rule()  # applies to every target file
        self.metadata_rules: dict[str, Rule] = {}  # by file name, e.g. "timestamp.json"
        self.served: list[Served] = []
        self.lock = threading.Lock()
        self.url = ""

    def artifact_bytes_since(self, mark: float) -> int:
        """Body bytes of target files sent by requests that started after `mark`."""
        with self.lock:
            return sum(s.sent for s in self.served if s.path.startswith("targets/") and s.at > mark)

    def artifact_requests(self) -> list[Served]:
        with self.lock:
            return [s for s in self.served if s.path.startswith("targets/")]

    def _lookup(self, path: str) -> tuple[Path, Rule]:
        if path.startswith("targets/"):
            base, rule = self.targets_dir, self.artifact_rule
            relative = path.removeprefix("targets/")
        else:
            base, rule = self.metadata_dir, self.metadata_rules.get(path, Rule())
            relative = path
        file = (base / relative).resolve()
        if not file.is_relative_to(base.resolve()):
            raise FileNotFoundError(path)
        return file, rule


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        mirror = self.server.mirror
        path = unquote(urlsplit(self.path).path)
        if not path.startswith("/tuf/"):
            self._status(404)
            return
        name = path.removeprefix("/tuf/")
        try:
            file, rule = mirror._lookup(name)
        except FileNotFoundError:
            self._status(404)
            return
        if rule.endless:
            self._endless(mirror, name)
            return
        if rule.replace is not None:
            data = rule.replace
        elif file.is_file():
            data = file.read_bytes()
        else:
            self._status(404)
            return
        if rule.flip_at is not None and rule.flip_at < len(data):
            flipped = bytearray(data)
            flipped[rule.flip_at] ^= 0x01
            data = bytes(flipped)
        data += rule.extra
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = memoryview(data)[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        served = Served(name, start, 206 if match else 200)
        with mirror.lock:
            mirror.served.append(served)
        step, pause = rule.trickle or (WRITE_CHUNK, 0.0)
        try:
            for offset in range(0, len(body), step):
                chunk = body[offset : offset + step]
                self.wfile.write(chunk)
                served.sent += len(chunk)
                if pause:
                    time.sleep(pause)
        except OSError:
            self.close_connection = True  # the client went away (a killed agent)

    def _endless(self, mirror: Mirror, name: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        served = Served(name, 0, 200)
        with mirror.lock:
            mirror.served.append(served)
        chunk = b'{"signed": ' + b" " * (64 * 1024)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                self.wfile.write(chunk)
                served.sent += len(chunk)
        except OSError:
            return

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    mirror: Mirror


@contextmanager
def serving(mirror: Mirror) -> Iterator[Mirror]:
    """Run `mirror` on a free loopback port; `mirror.url` is http://127.0.0.1:<port>."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.mirror = mirror
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
