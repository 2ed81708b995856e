"""The TUF repository as static-looking files under ``/tuf/`` (consistent snapshots).

Public on purpose: metadata is signed and devices fetch it before they hold any API
credential; integrity comes from the signatures, not the transport.
"""

import re

from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_GET

from device_agent.protocol.identifiers import FILENAME, MODEL_NAME
from ota import selectors
from ota.downloads import artifact_response

# Used with fullmatch and ASCII digits: "$" would serve "root.json\n" as root.json, and
# "\d" would take "1٣" for version 13. Roles are the top-level ones and model names (same alphabet).
METADATA_RE = re.compile(
    rf"(?:(?P<version>[1-9][0-9]{{0,9}})\.)?(?P<role>{MODEL_NAME.pattern})\.json"
)
HASH_PREFIXED_RE = re.compile(rf"(?P<sha256>[0-9a-f]{{64}})\.(?P<name>{FILENAME.pattern})")


@require_GET
def metadata(request: HttpRequest, filename: str) -> HttpResponseBase:
    match = METADATA_RE.fullmatch(filename)
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
    match = HASH_PREFIXED_RE.fullmatch(name)
    sha256 = match["sha256"] if match else None
    real_name = match["name"] if match else name
    artifact = selectors.artifact_for_target(f"{directory}/{real_name}", sha256)
    if artifact is None:
        raise Http404
    return artifact_response(request, artifact)
