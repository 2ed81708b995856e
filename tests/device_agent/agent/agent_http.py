"""A misbehaving-on-demand HTTP file server on 127.0.0.1 for download tests."""

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    data: bytes = b""
    honour_range: bool = True
    fail_first: int = 0  # answer 500 to this many requests first
    status: int | None = None  # answer this status always
    cut_after: int | None = None  # close the connection after this many body bytes
    cut_times: int = 1_000_000  # cut only this many responses
    bad_range_times: int = 0  # answer this many Range requests with the file's first bytes
    stall_after: int | None = None  # stop sending (but keep the socket) after N bytes
    stall_s: float = 5.0
    stall_times: int = 1_000_000  # stall only this many responses
    extra: bytes = b""  # sent after `data`, beyond the advertised length
    throttle: tuple[int, float] | None = None  # (bytes, seconds): send slowly
    requests: list[dict[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        b = self.server.behaviour
        b.requests.append({k.lower(): v for k, v in self.headers.items()})
        if b.fail_first > 0:
            b.fail_first -= 1
            self.send_error(500)
            return
        if b.status is not None:
            self.send_error(b.status)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and b.honour_range:
            start = int(match[1])
            if start >= len(b.data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(b.data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(b.data) - 1}/{len(b.data)}")
        else:
            self.send_response(200)
        body = b.data[start:] + b.extra
        if start and b.bad_range_times > 0:
            # A 206 whose Content-Range is right and whose body is not (a broken cache)
            b.bad_range_times -= 1
            body = b.data[: len(b.data) - start] + b.extra
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        limit = len(body)
        if b.cut_after is not None and b.cut_times > 0:
            b.cut_times -= 1
            limit = min(limit, b.cut_after)
        if b.stall_after is not None and b.stall_times > 0:
            b.stall_times -= 1
            self.wfile.write(body[: b.stall_after])
            self.wfile.flush()
            time.sleep(b.stall_s)
            return
        step, pause = b.throttle or (limit or 1, 0.0)
        try:
            for offset in range(0, limit, step):
                self.wfile.write(body[offset : min(offset + step, limit)])
                self.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away (killed agent)
        if limit < len(body):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for handlers still sleeping in a stall
    behaviour: Behaviour


@contextmanager
def file_server(behaviour: Behaviour) -> Iterator[str]:
    """Serve `behaviour` at http://127.0.0.1:<port>/file; yields the URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.behaviour = behaviour
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/file"
    finally:
        server.shutdown()
        server.server_close()
