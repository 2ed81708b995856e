"""API tokens (``Authorization: Bearer fleet_<lookup>_<secret>``): what authenticates,
what is refused and how, what the database keeps, and the OpenAPI schema and docs."""

import hashlib
import json
import os
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from fleet.auth import ALL_MODELS, SCOPE_FLEET_READ, SCOPE_PUBLISH, TOKEN_PREFIX
from fleet.models import ApiToken
from fleet.services import api_token_create
from ota.models import Artifact
from tests.ota.publishing_helpers import error_code, post_publish, signed_metadata

MODELS_URL = "/api/v1/models/"
PUBLISH_PATH = "/api/v1/models/{name}/publish"


def _get(token: str, url: str = MODELS_URL, scheme: str = "Bearer") -> Any:
    return Client().get(url, headers={"Authorization": f"{scheme} {token}"})


def _parts(token: str) -> tuple[str, str]:
    assert token.startswith(TOKEN_PREFIX)
    lookup, _, secret = token[len(TOKEN_PREFIX) :].partition("_")
    return lookup, secret


def _assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401
    body = json.loads(response.content)
    assert body["error"]["code"] == "unauthorized"
    assert body["error"]["detail"]


@pytest.mark.parametrize("scheme", ["Bearer", "Token"])
def test_valid_token_authenticates(ci_token: str, scheme: str) -> None:
    response = _get(ci_token, scheme=scheme)

    assert response.status_code == 200
    assert response.json() == []


def test_use_is_recorded(ci_token: str) -> None:
    lookup, _ = _parts(ci_token)
    assert ApiToken.objects.get(lookup=lookup).last_used_at is None

    assert _get(ci_token).status_code == 200

    assert ApiToken.objects.get(lookup=lookup).last_used_at is not None


def test_no_token_is_401(db: None) -> None:
    _assert_unauthorized(Client().get(MODELS_URL))


def test_revoked_token_is_401(ci_token: str) -> None:
    # given a token that worked
    assert _get(ci_token).status_code == 200
    lookup, _ = _parts(ci_token)

    # when it is revoked
    ApiToken.objects.filter(lookup=lookup).update(revoked_at=timezone.now())

    # then
    _assert_unauthorized(_get(ci_token))


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param("xyz", id="no-prefix"),
        pytest.param("fleet_", id="prefix-only"),
        pytest.param("fleet_abc", id="no-secret"),
        pytest.param("fleet_000000000000_secret", id="unknown-lookup"),
        pytest.param("", id="empty"),
    ],
)
def test_garbage_token_is_401(ci_token: str, garbage: str) -> None:
    _assert_unauthorized(_get(garbage))


def test_wrong_secret_with_right_lookup_is_401(ci_token: str) -> None:
    # given the real lookup part with another secret
    lookup, secret = _parts(ci_token)
    forged = f"{TOKEN_PREFIX}{lookup}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"

    # when / then
    _assert_unauthorized(_get(forged))


def test_token_of_a_disabled_user_is_401(ci_token: str) -> None:
    User.objects.filter(username="ci").update(is_active=False)

    _assert_unauthorized(_get(ci_token))


def test_database_keeps_only_a_hash_of_the_secret(ci_token: str) -> None:
    # given
    lookup, secret = _parts(ci_token)

    # when
    row = ApiToken.objects.get(lookup=lookup)

    # then no column holds the secret or the whole token
    assert row.secret_hash != secret
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored = json.dumps(
        {f.attname: str(getattr(row, f.attname)) for f in ApiToken._meta.concrete_fields}
    )
    assert secret not in stored
    assert ci_token not in stored


def test_tokens_are_unique(db: None) -> None:
    user = User.objects.create_user("twice")

    first = api_token_create(user=user, name="a", scopes=[SCOPE_FLEET_READ])[1]
    second = api_token_create(user=user, name="b", scopes=[SCOPE_FLEET_READ])[1]

    assert first != second
    assert _parts(first)[0] != _parts(second)[0]


def test_api_token_create_command_prints_a_working_token(db: None) -> None:
    # when an operator creates a token for a new CI account
    out = StringIO()
    call_command(
        "api_token_create", "--user", "ci2", "--scope", "publish", "--model", "*", stdout=out
    )

    # then the printed token authenticates as that account
    token = out.getvalue().strip()
    assert token.startswith(TOKEN_PREFIX)
    assert "\n" not in token
    assert _get(token).status_code == 200
    assert ApiToken.objects.get(lookup=_parts(token)[0]).user.username == "ci2"


def test_user_without_publish_permission_gets_403(
    kws: Any, release_key: Any, tmp_path: Path
) -> None:
    # given a plain account with a token, and an otherwise valid publish request
    plain = User.objects.create_user("plain")
    token = api_token_create(
        user=plain, name="plain", scopes=[SCOPE_PUBLISH], model_names=[ALL_MODELS]
    )[1]
    data = os.urandom(500)
    md = signed_metadata(None, release_key.signer, data)

    # when
    response = post_publish(Client(), token, md, data, tmp_path)

    # then
    assert response.status_code == 403
    assert error_code(response) == "forbidden"
    assert not Artifact.objects.exists()


def test_user_without_view_permission_gets_403_on_reads(db: None) -> None:
    plain = User.objects.create_user("reader")
    token = api_token_create(user=plain, name="reader", scopes=[SCOPE_FLEET_READ])[1]

    response = _get(token)

    assert response.status_code == 403
    assert error_code(response) == "forbidden"


def _staff_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_user("operator", is_staff=True))
    return client


def test_openapi_schema_yaml_lists_the_publish_path(db: None) -> None:
    # when
    response = _staff_client().get("/api/schema/")

    # then
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Fleet OTA API"
    publish = schema["paths"][PUBLISH_PATH]
    assert "multipart/form-data" in publish["post"]["requestBody"]["content"]
    assert "/api/v1/artifacts/{id}/download" in schema["paths"]


def test_openapi_schema_as_json_with_a_token(ci_token: str) -> None:
    response = _get(ci_token, url="/api/schema/?format=json")

    assert response.status_code == 200
    schema = json.loads(response.content)
    assert PUBLISH_PATH in schema["paths"]


def test_api_docs_render(db: None) -> None:
    response = _staff_client().get("/api/docs/")

    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
    assert b"/api/schema/" in response.content


def test_api_token_create_command_makes_an_operator_token(db: None) -> None:
    # when an operator's token is made for an account, as docs/rollouts.md says
    out = StringIO()
    call_command("api_token_create", "--user", "alice", "--role", "operator", stdout=out)

    # then the account may steer rollouts but not publish, and the token is its own
    alice = User.objects.get(username="alice")
    assert alice.has_perms(["ota.start_rollout", "ota.control_rollout", "ota.view_rollout"])
    assert not alice.has_perm("ota.add_artifact")
    assert not alice.has_usable_password()
    assert ApiToken.objects.get(lookup=_parts(out.getvalue().strip())[0]).user == alice


def test_a_ci_token_may_not_steer_rollouts(db: None) -> None:
    call_command(
        "api_token_create", "--user", "ci3", "--role", "ci", "--model", "kws", stdout=StringIO()
    )
    ci = User.objects.get(username="ci3")
    assert ci.has_perm("ota.add_artifact")
    assert not ci.has_perm("ota.start_rollout")
    assert not ci.has_perm("ota.control_rollout")
