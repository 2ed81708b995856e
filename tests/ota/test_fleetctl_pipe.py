"""``fleetctl … | head -1``: a reader that stops early ends fleetctl quietly (issue 16), with
the status of a command killed by SIGPIPE, never a BrokenPipeError traceback."""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FLEETCTL = Path(sys.executable).parent / "fleetctl"
ROLLOUT = {
    "id": "r-1",
    "model": "kws",
    "strategy": "phased",
    "version": "1.4.0",
    "status": "running",
    "current_stage": 0,
    "stages": [{"percent": 10, "bake_minutes": 30}, {"percent": 100, "bake_minutes": 0}],
    "selection": {"all": True},
    "created_at": "2026-12-01T10:00:00Z",
}


class _Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/api/v1/rollouts/r-1/"):
            body: object = ROLLOUT
        else:  # the list: enough rollouts that the output outgrows a pipe's buffer
            body = {"next": None, "results": [{**ROLLOUT, "id": f"r-{i}"} for i in range(3000)]}
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "FLEET_URL": url, "FLEET_TOKEN": "t"}


def test_show_into_a_closed_pipe_exits_quietly(api: str):
    # given: a pipe whose reader is already gone, so the first write fails
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        # when
        done = subprocess.run(
            [str(FLEETCTL), "rollout", "show", "r-1"],
            env=_env(api),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    # then: no traceback, nothing on stderr, the SIGPIPE status
    assert done.stderr == ""
    assert done.returncode == 141


def test_list_into_head_prints_one_line_and_no_traceback(api: str):
    done = subprocess.run(  # noqa: S602 - a pipe into head is what this tests
        f"'{FLEETCTL}' rollout list --limit 3000 | head -1; echo \"status ${{PIPESTATUS[0]}}\"",
        shell=True,
        executable="/bin/bash",
        env=_env(api),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ID ")
    assert lines[1] == "status 141"
