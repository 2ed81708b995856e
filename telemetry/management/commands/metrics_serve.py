"""``manage.py metrics_serve``: the web process's metrics on a port of their own.

For deployments that keep /metrics off the public web server (FLEET_METRICS_WEB=false):
run this next to gunicorn, with the same PROMETHEUS_MULTIPROC_DIR, and let Prometheus
scrape it on a network only it reaches. It serves the fleet gauges (read from the
database) and what the gunicorn workers counted, without authentication.
"""

import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections, connections
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from telemetry.exposition import web_exposition


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        try:
            body = web_exposition()
        finally:
            close_old_connections()
            connections.close_all()  # this thread's connection; threads do not outlive a request
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # one line per scrape is noise


def metrics_server(addr: str, port: int) -> ThreadingHTTPServer:
    """A server for GET /metrics on addr:port (0: any free port); call serve_forever()."""
    server = ThreadingHTTPServer((addr, port), _Handler)
    server.daemon_threads = True
    return server


class Command(BaseCommand):
    help = "Serve the web process's Prometheus metrics on ADDR:PORT (GET /metrics)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=9101)
        parser.add_argument("--addr", default="127.0.0.1")

    def handle(self, *args: Any, **options: Any) -> None:
        server = metrics_server(options["addr"], options["port"])

        def stop(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"metrics on http://{options['addr']}:{server.server_port}/metrics")
        server.serve_forever()
        server.server_close()
