"""Serving artifact bytes: single-range HTTP Range on local storage, a presigned
redirect on S3 (devices never pull model bytes through Django in production)."""

import re
from collections.abc import Iterator
from typing import IO

from django.conf import settings
from django.core.files.storage import storages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.http.response import HttpResponseBase

from ota.models import Artifact

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 256 * 1024


def _chunks(f: IO[bytes], remaining: int) -> Iterator[bytes]:
    try:
        while remaining > 0:
            data = f.read(min(CHUNK, remaining))
            if not data:
                return
            remaining -= len(data)
            yield data
    finally:
        f.close()


def parse_range(header: str, length: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a satisfiable single range, None for 'whole file'.

    Raises ValueError when the range cannot be satisfied (answered with 416).
    Multi-range requests are answered with the whole file, as RFC 9110 allows.
    """
    match = RANGE_RE.match(header.strip())
    if match is None:
        return None
    first_s, last_s = match.groups()
    if not first_s and not last_s:
        return None
    if not first_s:  # suffix range: the last N bytes
        n = int(last_s)
        if n == 0 or length == 0:
            raise ValueError("range not satisfiable")
        return max(0, length - n), length - 1
    first = int(first_s)
    last = min(int(last_s), length - 1) if last_s else length - 1
    if first >= length or (last_s and int(last_s) < first):
        raise ValueError("range not satisfiable")
    return first, last


def artifact_response(request: HttpRequest, artifact: Artifact) -> HttpResponseBase:
    storage = storages["artifacts"]
    if settings.FLEET_STORAGE == "s3":
        return HttpResponseRedirect(storage.url(artifact.storage_key))
    length = artifact.length
    header = request.headers.get("Range", "")
    try:
        span = parse_range(header, length) if header else None
    except ValueError:
        refused = HttpResponse(status=416)
        refused["Content-Range"] = f"bytes */{length}"
        return refused
    f = storage.open(artifact.storage_key, "rb")
    first, last = span if span else (0, length - 1)
    if first:
        f.seek(first)
    count = last - first + 1 if length else 0
    response = StreamingHttpResponse(
        _chunks(f, count), status=206 if span else 200, content_type="application/octet-stream"
    )
    response["Content-Length"] = str(count)
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = f'"{artifact.sha256}"'
    if span:
        response["Content-Range"] = f"bytes {first}-{last}/{length}"
    filename = artifact.target_path.rsplit("/", 1)[-1]
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
