"""The TUF repository as static-looking files under ``/tuf/`` (consistent snapshots).

Public on purpose: metadata is signed and devices fetch it before they hold any API
credential; integrity comes from the signatures, not the transport.
"""

import re

from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_GET

from ota import selectors
from ota.downloads import artifact_response

METADATA_RE = re.compile(
    r"^(?:(?P<version>[1-9]\d{0,9})\.)?(?P<role>[a-z0-9][a-z0-9_-]{0,63})\.json$"
)
HASH_PREFIXED_RE = re.compile(r"^(?P<sha256>[0-9a-f]{64})\.(?P<name>.+)$")


@require_GET
def metadata(request: HttpRequest, filename: str) -> HttpResponseBase:
    match = METADATA_RE.match(filename)
    if match is None:
        raise Http404
    version = int(match["version"]) if match["version"] else None
    data = selectors.tuf_metadata_bytes(match["role"], version)
    if data is None:
        raise Http404
    response = HttpResponse(data, content_type="application/json")
    # Versioned files never change; the unversioned ones (timestamp.json) always may.
    response["Cache-Control"] = "public, max-age=31536000, immutable" if version else "no-cache"
    return response


@require_GET
def target(request: HttpRequest, path: str) -> HttpResponseBase:
    directory, _, name = path.rpartition("/")
    match = HASH_PREFIXED_RE.match(name)
    sha256 = match["sha256"] if match else None
    real_name = match["name"] if match else name
    artifact = selectors.artifact_for_target(f"{directory}/{real_name}", sha256)
    if artifact is None:
        raise Http404
    return artifact_response(request, artifact)
