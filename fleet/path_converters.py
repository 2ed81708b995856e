"""URL path converters for identifiers: ``<model_name:name>``, ``<device_id:device_id>``...

Kept free of DRF and the models so that settings can describe them in the OpenAPI schema.
"""

from typing import Any

from django.core.exceptions import BadRequest
from django.urls import register_converter
from django.urls.converters import get_converters

from device_agent.protocol import identifiers
from device_agent.protocol.identifiers import IdentifierKind, InvalidIdentifier


class InvalidPathIdentifier(BadRequest):
    """An identifier in the URL path outside its alphabet: a 400 from ``bad_request``."""

    def __init__(self, exc: InvalidIdentifier) -> None:
        super().__init__(exc.detail)
        self.code = exc.code
        self.detail = exc.detail


class IdentifierConverter:
    """A path converter taking any segment and refusing (400) one outside the alphabet.

    The segment is matched loosely (no ``/``) so a bad id is answered with what is
    wrong with it rather than a bare 404; a ValueError would only make Django try the
    next pattern.
    """

    regex = "[^/]+"
    kind: IdentifierKind

    def to_python(self, value: str) -> str:
        try:
            return self.kind.check(value, field=self.kind.name)
        except InvalidIdentifier as exc:
            raise InvalidPathIdentifier(exc) from None

    def to_url(self, value: str) -> str:
        return value


PATH_CONVERTERS: dict[str, IdentifierKind] = {
    "model_name": identifiers.MODEL_NAME,
    "version": identifiers.VERSION,
    "device_id": identifiers.DEVICE_ID,
    "group_name": identifiers.GROUP_NAME,
    "rollout_id": identifiers.ROLLOUT_ID,
    "reported_rollout_id": identifiers.REPORTED_ROLLOUT_ID,
    "release_key_id": identifiers.RELEASE_KEY_ID,
}


def path_converters_register() -> None:
    """Register ``<model_name:name>`` and the others (once; called by FleetConfig.ready)."""
    registered = get_converters()
    for name, kind in PATH_CONVERTERS.items():
        if name not in registered:
            converter = type(
                f"{kind.name.title().replace(' ', '')}Converter",
                (IdentifierConverter,),
                {"kind": kind},
            )
            register_converter(converter, name)


def openapi_path_overrides() -> dict[str, dict[str, Any]]:
    """drf-spectacular's PATH_CONVERTER_OVERRIDES: each converter's real alphabet."""
    return {
        name: {"type": "string", "pattern": f"^(?:{kind.pattern})$", "maxLength": kind.max_length}
        for name, kind in PATH_CONVERTERS.items()
    }
