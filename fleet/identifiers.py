"""The identifier rules (``device_agent/protocol/identifiers.py``) in the control plane.

One check raising ``ServiceError`` with the kind's stable code, a DRF field, Django
model validators (the admin) and JSON 400/404 handlers for the path converters
(``fleet/path_converters.py``), so a bad identifier is refused the same way wherever it
arrives: body, query string or URL.
"""

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import RegexValidator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deconstruct import deconstructible
from django.views import defaults
from rest_framework import serializers

from device_agent.protocol import identifiers
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import IdentifierKind, InvalidIdentifier
from fleet.errors import ServiceError
from fleet.path_converters import InvalidPathIdentifier

# The single arm of a phased rollout: its name in the admin, the API, /metrics and the
# telemetry store (whose samples of a rollout that name no arm are stored under it). Here,
# below rollouts and telemetry, because both name it.
PHASED_ARM = "main"


def identifier_check(kind: IdentifierKind, value: object, *, field: str) -> str:
    """``value`` when it is a valid ``kind``, else a ServiceError with the kind's code."""
    try:
        return kind.check(value, field=field)
    except InvalidIdentifier as exc:
        raise ServiceError(exc.code, exc.detail) from None


def identifiers_check(kind: IdentifierKind, values: Iterable[object], *, field: str) -> None:
    for value in values:
        identifier_check(kind, value, field=field)


class IdentifierField(serializers.CharField):
    """A string that must be a valid identifier of ``kind``; anything else (a number,
    whitespace around it, a trailing newline) is refused with the kind's code, never
    trimmed or converted into something valid."""

    def __init__(self, kind: IdentifierKind, **kwargs: Any) -> None:
        self.kind = kind
        kwargs.setdefault("max_length", kind.max_length)
        kwargs["trim_whitespace"] = False
        super().__init__(**kwargs)
        # For the OpenAPI schema (drf-spectacular reads the pattern from the validator);
        # to_internal_value has refused everything this validator would.
        self.validators.append(_SchemaPattern(kind))

    def run_validation(self, data: Any = serializers.empty) -> Any:
        # CharField's own run_validation answers "may not be blank" for "": an empty
        # identifier is an identifier outside the alphabet like any other.
        if data == "" and self.allow_blank:
            return ""
        return serializers.Field.run_validation(self, data)

    def to_internal_value(self, data: Any) -> str:
        return identifier_check(self.kind, data, field=self._path())

    def _path(self) -> str:
        parent = self.parent
        if self.field_name or parent is None:
            return self.field_name
        return f"{parent.field_name}[]"  # a ListField's child


class _SchemaPattern(RegexValidator):
    def __init__(self, kind: IdentifierKind) -> None:
        super().__init__(f"^(?:{kind.pattern})$")

    def __call__(self, value: object) -> None:
        """Nothing to do: IdentifierField.to_internal_value already checked, in full."""


@deconstructible
class IdentifierValidator:
    """A model field validator for the admin's forms: ``kind`` names a constant of
    ``device_agent.protocol.identifiers`` (a name, so migrations can serialise it)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, value: object) -> None:
        rule: IdentifierKind = getattr(identifiers, self.kind)
        if not rule.is_valid(value):
            raise DjangoValidationError(
                f"not a valid {rule.name}: {rule.rule()}", code=ErrorCode.INVALID_IDENTIFIER.value
            )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdentifierValidator) and other.kind == self.kind

    def __hash__(self) -> int:
        return hash(self.kind)


@deconstructible
class IdentifierListValidator(IdentifierValidator):
    """The same for a JSON list of identifiers (a dynamic group's hardware and tags)."""

    def __call__(self, value: object) -> None:
        if not isinstance(value, list):
            raise DjangoValidationError("must be a list", code=ErrorCode.MALFORMED.value)
        for item in value:
            super().__call__(item)


# --- URLs -----------------------------------------------------------------------------


def _api_path(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/tuf/"))


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: the API's JSON error for an identifier refused in the URL."""
    if isinstance(exception, InvalidPathIdentifier):
        body = {"error": {"code": str(exception.code), "detail": exception.detail}}
        return JsonResponse(body, status=400)
    if _api_path(request):
        body = {"error": {"code": str(ErrorCode.MALFORMED), "detail": "bad request"}}
        return JsonResponse(body, status=400)
    return defaults.bad_request(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: JSON under /api/ and /tuf/ (an id with ``/`` in it matches no path)."""
    if _api_path(request):
        body = {"error": {"code": str(ErrorCode.NOT_FOUND), "detail": "not found"}}
        return JsonResponse(body, status=404)
    return defaults.page_not_found(request, exception)
