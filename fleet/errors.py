"""API errors: JSON ``{"error": {"code": ..., "detail": ...}}`` with a stable code."""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
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
    ErrorCode.CONFLICT: status.HTTP_409_CONFLICT,
    ErrorCode.VERSION_EXISTS: status.HTTP_409_CONFLICT,
    ErrorCode.PAYLOAD_TOO_LARGE: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.SIGNATURE_INVALID: status.HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.THRESHOLD_NOT_MET: status.HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.HASH_MISMATCH: status.HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.ROLLBACK_DETECTED: status.HTTP_422_UNPROCESSABLE_ENTITY,
    ErrorCode.METADATA_EXPIRED: status.HTTP_422_UNPROCESSABLE_ENTITY,
}


class ServiceError(Exception):
    """A refusal a caller can act on, raised by services and rendered by the API."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, status.HTTP_400_BAD_REQUEST)


def error_response(code: ErrorCode, detail: str, http_status: int | None = None) -> Response:
    status_code = http_status or HTTP_STATUS.get(code, status.HTTP_400_BAD_REQUEST)
    return Response({"error": {"code": str(code), "detail": detail}}, status=status_code)


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(v) for v in detail)
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render every API failure in the one error shape."""
    if isinstance(exc, ServiceError):
        return error_response(exc.code, exc.detail, exc.http_status)
    if isinstance(exc, Http404):
        return error_response(ErrorCode.NOT_FOUND, "not found")
    if isinstance(exc, PermissionDenied):
        return error_response(ErrorCode.FORBIDDEN, "permission denied")
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
    elif response.status_code == status.HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        code = ErrorCode.PAYLOAD_TOO_LARGE
    else:
        code = ErrorCode.MALFORMED
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    response.data = {"error": {"code": str(code), "detail": _flatten(detail)}}
    return response
