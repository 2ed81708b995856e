"""API errors: JSON ``{"error": {"code": ..., "detail": ...}}`` with a stable code.

Two places produce the envelope: ``api_exception_handler`` for everything raised inside a
DRF view (with the exception's own detail), and ``fleet.middleware.ErrorEnvelopeMiddleware``
for what Django answers outside one (unknown paths, server faults, debug pages).
"""

from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import IntegrityError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from device_agent.protocol.errors import ErrorCode

# How each code is answered over HTTP; codes not listed are 400.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: status.HTTP_401_UNAUTHORIZED,
    ErrorCode.FORBIDDEN: status.HTTP_403_FORBIDDEN,
    ErrorCode.NOT_FOUND: status.HTTP_404_NOT_FOUND,
    ErrorCode.UNKNOWN_MODEL: status.HTTP_404_NOT_FOUND,
    ErrorCode.METHOD_NOT_ALLOWED: status.HTTP_405_METHOD_NOT_ALLOWED,
    ErrorCode.CONFLICT: status.HTTP_409_CONFLICT,
    ErrorCode.VERSION_EXISTS: status.HTTP_409_CONFLICT,
    ErrorCode.PAYLOAD_TOO_LARGE: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.SIGNATURE_INVALID: status.HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.THRESHOLD_NOT_MET: status.HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.HASH_MISMATCH: status.HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.ROLLBACK_DETECTED: status.HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.METADATA_EXPIRED: status.HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.THROTTLED: status.HTTP_429_TOO_MANY_REQUESTS,
    ErrorCode.INTERNAL: status.HTTP_500_INTERNAL_SERVER_ERROR,
}

# The code of an error response that carries nothing better than its status.
STATUS_CODES: dict[int, ErrorCode] = {
    status.HTTP_401_UNAUTHORIZED: ErrorCode.UNAUTHORIZED,
    status.HTTP_403_FORBIDDEN: ErrorCode.FORBIDDEN,
    status.HTTP_404_NOT_FOUND: ErrorCode.NOT_FOUND,
    status.HTTP_405_METHOD_NOT_ALLOWED: ErrorCode.METHOD_NOT_ALLOWED,
    status.HTTP_409_CONFLICT: ErrorCode.CONFLICT,
    status.HTTP_413_REQUEST_ENTITY_TOO_LARGE: ErrorCode.PAYLOAD_TOO_LARGE,
    status.HTTP_429_TOO_MANY_REQUESTS: ErrorCode.THROTTLED,
}


def code_for_status(http_status: int) -> ErrorCode:
    if http_status >= 500:
        return ErrorCode.INTERNAL
    return STATUS_CODES.get(http_status, ErrorCode.MALFORMED)


class ServiceError(Exception):
    """A refusal a caller can act on, raised by services and rendered by the API."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, status.HTTP_400_BAD_REQUEST)


def error_body(code: ErrorCode, detail: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": str(code), "detail": detail}}


def error_response(code: ErrorCode, detail: str, http_status: int | None = None) -> Response:
    status_code = http_status or HTTP_STATUS.get(code, status.HTTP_400_BAD_REQUEST)
    return Response(error_body(code, detail), status=status_code)


def error_json_response(code: ErrorCode, detail: str, http_status: int) -> JsonResponse:
    """The envelope outside DRF (middleware, Django's error handlers)."""
    return JsonResponse(error_body(code, detail), status=http_status)


def flatten_detail(detail: Any) -> str:
    """A validation error's nested detail as one line, as the API's error envelope says it."""
    return _flatten(detail)


def _flatten(detail: Any) -> str:
    # Iterative: a validation error may echo a deeply nested document back.
    parts: list[str] = []
    stack: list[tuple[str, Any]] = [("", detail)]
    while stack:
        prefix, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((f"{prefix}{k}: ", v) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((prefix, v) for v in reversed(item))
        else:
            parts.append(f"{prefix}{item}")
    return "; ".join(parts)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render every API failure in the one error shape.

    Returns None only for a fault of ours (a 500): Django then logs it with its traceback
    and ``ErrorEnvelopeMiddleware`` answers the client with the ``internal`` envelope.
    """
    if isinstance(exc, ServiceError):
        return error_response(exc.code, exc.detail, exc.http_status)
    if isinstance(exc, Http404):
        return error_response(ErrorCode.NOT_FOUND, "not found")
    if isinstance(exc, PermissionDenied):
        return error_response(ErrorCode.FORBIDDEN, "permission denied")
    if isinstance(exc, RequestDataTooBig):
        return error_response(ErrorCode.PAYLOAD_TOO_LARGE, str(exc))
    if isinstance(exc, SuspiciousOperation):
        return error_response(ErrorCode.MALFORMED, str(exc))
    if isinstance(exc, IntegrityError):
        # A concurrent writer took the name (or row) this request checked was free.
        return error_response(ErrorCode.CONFLICT, "the request conflicts with a concurrent change")
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        # A refusal that names a code of ours keeps it (fleet.auth.TokenExpired).
        code = (
            ErrorCode(exc.default_code)
            if exc.default_code in set(ErrorCode)
            else ErrorCode.UNAUTHORIZED
        )
        response.status_code = status.HTTP_401_UNAUTHORIZED
    elif isinstance(exc, exceptions.PermissionDenied):
        code = ErrorCode.FORBIDDEN
    elif isinstance(exc, exceptions.NotFound):
        code = ErrorCode.NOT_FOUND
    elif isinstance(exc, exceptions.Throttled):
        code = ErrorCode.THROTTLED
        # DRF sets it from the throttle's wait, which a throttle may not know.
        response.headers.setdefault("Retry-After", "1")
    else:
        code = code_for_status(response.status_code)
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    response.data = error_body(code, _flatten(detail))
    return response
