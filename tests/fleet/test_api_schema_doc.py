"""The OpenAPI schema says what the API does: Bearer tokens, the error envelope on every
operation, the telemetry responses' real (object) shapes, nullable fields, and an upper
bound on every number and text a request body takes."""

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema(django_db_setup, django_db_blocker) -> dict[str, Any]:
    with django_db_blocker.unblock():
        client = Client()
        user, _ = User.objects.get_or_create(username="schema-reader")
        client.force_login(user)
        response = client.get("/api/schema/?format=json")
        user.delete()
    assert response.status_code == 200
    return dict(response.json())


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "responses" in op
    ]


def test_bearer_tokens_are_a_security_scheme(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    bearer = [s for s in schemes.values() if s.get("scheme") == "bearer"]
    assert len(bearer) == 1
    assert bearer[0]["type"] == "http"
    name = next(n for n, s in schemes.items() if s.get("scheme") == "bearer")
    devices = schema["paths"]["/api/v1/devices/"]["get"]
    assert {name: []} in devices["security"]


def test_every_operation_documents_the_error_envelope(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert "throttled" in error["properties"]["error"]["properties"]["code"]["enum"]
    for path, method, op in _operations(schema):
        for code in ("400", "404", "429", "500"):
            body = op["responses"][code]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/Error"}, (path, method, code)
        if path != "/api/v1/enroll":
            assert "401" in op["responses"], (path, method)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/api/v1/telemetry/devices/{device_id}/samples", "samples"),
        ("/api/v1/telemetry/rollouts/{rollout_id}/rollups", "buckets"),
        ("/api/v1/telemetry/rollouts/{rollout_id}/summary", "arms"),
    ],
)
def test_telemetry_responses_are_objects(schema: dict[str, Any], path: str, key: str) -> None:
    ok = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    body = _resolve(schema, ok["schema"])
    assert body["type"] == "object"
    assert key in body["properties"]


def test_nullable_fields_are_marked(schema: dict[str, Any]) -> None:
    device = schema["components"]["schemas"]["RolloutDevice"]["properties"]
    assert device["previous_version"].get("nullable") is True
    assert device["version"].get("nullable") is True


def _unbounded(
    schema: dict[str, Any], node: dict[str, Any], where: str, seen: set[str]
) -> list[str]:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        seen.add(name)
        return _unbounded(schema, _resolve(schema, node), f"{where}<{name}>", seen)
    out: list[str] = []
    for part in node.get("allOf", []) + node.get("oneOf", []) + node.get("anyOf", []):
        out += _unbounded(schema, part, where, seen)
    kind = node.get("type")
    if node.get("readOnly") or "enum" in node:
        return out
    if kind in {"number", "integer"} and "maximum" not in node:
        out.append(where)
    # a pattern here always bounds the length too ({m,n})
    if (
        kind == "string"
        and not {"maxLength", "pattern"} & set(node)
        and node.get("format")
        not in {
            "date-time",
            "binary",
            "uri",
        }
    ):
        out.append(where)
    if kind == "array":
        if "maxItems" not in node:
            out.append(f"{where}[]")
        out += _unbounded(schema, node.get("items", {}), f"{where}[]", seen)
    for name, prop in node.get("properties", {}).items():
        out += _unbounded(schema, prop, f"{where}.{name}", seen)
    return out


def test_every_number_and_text_a_request_takes_has_an_upper_bound(schema: dict[str, Any]) -> None:
    unbounded: list[str] = []
    for path, method, op in _operations(schema):
        for media in op.get("requestBody", {}).get("content", {}).values():
            unbounded += _unbounded(schema, media["schema"], f"{method} {path}", set())
        for parameter in op.get("parameters", []):
            if parameter["in"] == "query":
                unbounded += _unbounded(
                    schema, parameter["schema"], f"{method} {path}?{parameter['name']}", set()
                )
    assert unbounded == [], "\n".join(unbounded)
