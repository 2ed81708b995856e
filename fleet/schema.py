"""The OpenAPI schema's parts that drf-spectacular cannot infer: the Bearer token scheme
and the error envelope every operation may answer with (docs/api.md)."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from device_agent.protocol.errors import ErrorCode

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every API error: a stable code and a detail for people.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "enum": sorted(code.value for code in ErrorCode)},
                "detail": {"type": "string"},
            },
            "required": ["code", "detail"],
        }
    },
    "required": ["error"],
}
# Documented on every operation (the others only where they apply).
_ALWAYS = {
    "400": "malformed request (or another refusal with its code)",
    "404": "not_found (or unknown_model): the path's or a referenced object does not exist",
    "405": "method_not_allowed",
    "429": "throttled: retry after the Retry-After header",
    "500": "internal: a fault of the server, logged",
    # a public operation's credential is in its body (enrollment's one-time token)
    "401": "unauthorized (or token_expired): no or a bad credential",
    "403": "forbidden: the token's user lacks the permission",
}
_WITH_BODY = {"413": "payload_too_large"}
_WRITES = {"409": "conflict: the state changed; refetch and retry"}
_PUBLISH = {"422": "a signature, threshold, hash, rollback or expiry refusal"}


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "fleet.auth.ApiTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "fleet_<id>_<secret> (manage.py api_token_create)",
        }


def error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: the Error component and its responses on every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            codes = dict(_ALWAYS)
            if "requestBody" in operation:
                codes |= _WITH_BODY
            if method in {"post", "put", "patch", "delete"}:
                codes |= _WRITES
            if path.endswith("/publish") or path.endswith("/metadata"):
                codes |= _PUBLISH
            for code, description in codes.items():
                operation["responses"].setdefault(
                    code,
                    {"description": description, "content": {"application/json": {"schema": ref}}},
                )
    return result
