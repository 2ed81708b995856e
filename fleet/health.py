"""``GET /healthz``: database and artifact storage reachability, for load balancers."""

import logging

from django.core.files.storage import storages
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)


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
        storages["artifacts"].exists("healthz-probe")
        checks["storage"] = "ok"
    except Exception as exc:  # boto/OS errors alike
        log.warning("healthz: storage unreachable: %s", exc)
        checks["storage"] = "unreachable"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unhealthy", "checks": checks},
        status=200 if healthy else 503,
    )
