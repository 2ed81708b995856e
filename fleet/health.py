"""``GET /healthz``: database and artifact storage reachability, for load balancers."""

import logging
import os

from django.core.files.storage import storages
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)


def _storage_probe() -> None:
    storage = storages["artifacts"]
    bucket = getattr(storage, "bucket_name", None)
    if bucket:  # S3: exists() reads a missing bucket as a missing object
        storage.connection.meta.client.head_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        return
    location = getattr(storage, "location", None)
    if location is not None:
        os.makedirs(location, exist_ok=True)
        if not os.access(location, os.W_OK):
            raise PermissionError(f"{location} is not writable")


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "unreachable"
        log.warning("healthz: database unreachable: %s", exc)
        checks["database"] = "unreachable"
    try:
        _storage_probe()
        checks["storage"] = "ok"
    except Exception as exc:  # boto/OS errors alike
        log.warning("healthz: storage unreachable: %s", exc)
        checks["storage"] = "unreachable"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unhealthy", "checks": checks},
        status=200 if healthy else 503,
    )
