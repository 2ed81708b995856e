"""WSGI application for the publish benchmark (served by gunicorn in a subprocess).

``PUT /bench/sink`` is the reference: a plain streaming upload that reads the body in
1 MiB chunks, writes it to a temporary file where Django puts its own upload temp files
(``FILE_UPLOAD_TEMP_DIR``) and hashes it with sha256, as the publish upload handler does.
Every other request goes to the Fleet OTA application, so both uploads hit one process.
"""

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from fleet.wsgi import application as fleet_application

SINK_PATH = "/bench/sink"
CHUNK = 1024 * 1024

StartResponse = Callable[..., Any]


def sink(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0:
        start_response("411 Length Required", [("Content-Length", "0")])
        return [b""]
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    received = 0
    with tempfile.NamedTemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR, suffix=".sink") as out:
        while received < length:
            chunk = stream.read(min(CHUNK, length - received))
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
        out.flush()
    body = json.dumps({"sha256": digest.hexdigest(), "length": received}).encode()
    status = "200 OK" if received == length else "400 Bad Request"
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == SINK_PATH and environ.get("REQUEST_METHOD") == "PUT":
        return sink(environ, start_response)
    return fleet_application(environ, start_response)
