"""API token scopes: the permission matrix of docs/security.md checked cell by cell, model
limits, expiry, what ``api_token_create`` does to accounts, and what the migration gave
the tokens made before scopes existed."""

import os
import re
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from fleet.auth import (
    ALL_MODELS,
    SCOPE_FLEET_READ,
    SCOPE_PUBLISH,
    SCOPE_ROLLOUTS_CREATE,
    SCOPE_ROLLOUTS_OPERATE,
    SCOPE_USER,
    SCOPES,
    TOKEN_PREFIX,
)
from fleet.models import ApiToken, Group
from fleet.services import api_token_create
from ota.models import Artifact, Rollout
from tests.ota.publishing_helpers import error_code, post_publish, signed_metadata
from tests.ota.rollout_helpers import artifact, devices

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
PLACEHOLDERS = {
    "name": "kws",
    "version": "1.0.0",
    "id": "1",
    "keyid": "0" * 64,
    "rollout": "r-1",
    "device": "dev-1",
}


def _matrix() -> tuple[list[str], list[tuple[str, str, set[str]]]]:
    """docs/security.md's endpoint x scope table: (scopes, [(method, path, allowed)])."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| endpoint |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")][1:]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        method, path = cells[0].strip("`").split(" ", 1)
        rows.append((method, path, {s for s, c in zip(header, cells[1:], strict=True) if c}))
    return header, rows


COLUMNS, ROWS = _matrix()
CELLS = [
    pytest.param(method, path, scope, scope in allowed, id=f"{method} {path} [{scope}]")
    for method, path, allowed in ROWS
    for scope in COLUMNS
]


def _superuser_token(scopes: list[str], models: list[str] | None = None) -> str:
    user = User.objects.create_superuser(f"admin-{User.objects.count()}", password=None)
    from fleet.auth import MODEL_SCOPES

    needs_models = bool(MODEL_SCOPES.intersection(scopes))
    return api_token_create(
        user=user,
        name="t",
        scopes=scopes,
        model_names=(models or [ALL_MODELS]) if needs_models else [],
    )[1]


def _call(token: str, method: str, path: str) -> Any:
    url = re.sub(r"\{(\w+)\}", lambda m: PLACEHOLDERS[m[1]], path)
    return Client(raise_request_exception=False).generic(
        method,
        url,
        "{}" if method in {"POST", "PUT", "PATCH"} else "",
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


def test_the_documented_columns_are_the_scopes() -> None:
    assert set(COLUMNS) == set(SCOPES) - {SCOPE_USER}


@pytest.mark.parametrize(("method", "path", "scope", "allowed"), CELLS)
def test_permission_matrix(method: str, path: str, scope: str, allowed: bool, db: None) -> None:
    # given a superuser's token limited to one scope
    token = _superuser_token([scope])

    # when it calls the endpoint (with an empty body: refusals come before validation)
    response = _call(token, method, path)

    # then the scope alone decides
    if allowed:
        assert response.status_code not in {401, 403}, response.content
    else:
        assert response.status_code == 403, response.content
        assert error_code(response) == "forbidden"


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in ROWS])
def test_a_user_scope_token_has_its_users_rights(method: str, path: str, db: None) -> None:
    # the scope the migration gives tokens made before scopes: a superuser's may call all
    response = _call(_superuser_token([SCOPE_USER]), method, path)

    assert response.status_code not in {401, 403}, response.content


def _routes(patterns: list[Any], prefix: str = "") -> list[str]:
    found = []
    for p in patterns:
        route = str(p.pattern).removeprefix("^").removesuffix("$")
        route = re.sub(r"<(?:\w+:)?\w+>|\(\?P<\w+>[^)]*\)", "{}", route)
        route = route.replace("\\.", ".")
        if isinstance(p, URLResolver):
            found += _routes(p.url_patterns, prefix + route)
        elif isinstance(p, URLPattern):
            found.append("/" + prefix + route)
    return found


def test_the_matrix_covers_every_api_route() -> None:
    documented = {re.sub(r"\{\w+\}", "{}", path) for _, path, _ in ROWS}
    routes = {r for r in _routes(get_resolver().url_patterns) if r.startswith("/api/")}
    public = {"/api/v1/enroll", "/api/docs/", "/api/redoc/"}

    assert routes - public - documented == set()


# --- model limits -------------------------------------------------------------------------


def test_a_token_for_one_model_cannot_publish_another(
    kws: Any, release_key: Any, tmp_path: Path
) -> None:
    # given CI's token for another model, and a publish of kws its release key signed
    token = _superuser_token([SCOPE_PUBLISH], ["vad"])
    data = os.urandom(300)
    md = signed_metadata(None, release_key.signer, data)

    # when / then
    response = post_publish(Client(), token, md, data, tmp_path)
    assert (response.status_code, error_code(response)) == (403, "forbidden")
    assert "kws" in response.json()["error"]["detail"]
    assert not Artifact.objects.exists()
    # and its own model's token publishes
    own = post_publish(Client(), _superuser_token([SCOPE_PUBLISH], ["kws"]), md, data, tmp_path)
    assert own.status_code == 201, own.content


def _rollout_body() -> dict[str, Any]:
    return {
        "model": "kws",
        "strategy": "phased",
        "version": "1.0.0",
        "selection": {"groups": ["canary"]},
    }


@pytest.fixture
def published(db: None) -> None:
    artifact("1.0.0")
    Group.objects.create(name="canary").devices.add(*devices(3))


def _post(token: str, path: str, body: object) -> Any:
    return Client().post(
        f"/api/v1/{path}",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


def test_rollouts_are_limited_to_the_tokens_models(published: None) -> None:
    # a token for another model may neither create a kws rollout
    other = _superuser_token([SCOPE_ROLLOUTS_CREATE, SCOPE_ROLLOUTS_OPERATE], ["vad"])
    refused = _post(other, "rollouts/", _rollout_body())
    assert (refused.status_code, error_code(refused)) == (403, "forbidden")
    assert not Rollout.objects.exists()

    # nor act on one
    own = _superuser_token([SCOPE_ROLLOUTS_CREATE, SCOPE_ROLLOUTS_OPERATE], ["kws"])
    created = _post(own, "rollouts/", _rollout_body())
    assert created.status_code == 201, created.content
    rollout_id = created.json()["id"]
    for action in ("schedule", "start", "pause", "abort"):
        response = _post(other, f"rollouts/{rollout_id}/{action}", {"reason": "x"})
        assert (response.status_code, error_code(response)) == (403, "forbidden"), action

    # while the kws token may
    assert _post(own, f"rollouts/{rollout_id}/start", {"reason": "go"}).status_code == 200


def test_ci_token_cannot_list_a_rollouts_devices(ci_token: str, published: None) -> None:
    # given a rollout CI may read
    own = _superuser_token([SCOPE_ROLLOUTS_CREATE], ["kws"])
    rollout_id = _post(own, "rollouts/", _rollout_body()).json()["id"]
    read = Client().get(
        f"/api/v1/rollouts/{rollout_id}/", headers={"Authorization": f"Bearer {ci_token}"}
    )
    assert read.status_code == 200

    # when it asks for the devices in it, which /devices/ would not show it
    response = Client().get(
        f"/api/v1/rollouts/{rollout_id}/devices", headers={"Authorization": f"Bearer {ci_token}"}
    )

    # then
    assert (response.status_code, error_code(response)) == (403, "forbidden")


# --- expiry -------------------------------------------------------------------------------


def test_an_expired_token_is_401_token_expired(db: None) -> None:
    # given a token that worked
    token = _superuser_token([SCOPE_FLEET_READ])
    headers = {"Authorization": f"Bearer {token}"}
    assert Client().get("/api/v1/devices/", headers=headers).status_code == 200

    # when its expiry passes
    lookup = token[len(TOKEN_PREFIX) :].split("_")[0]
    ApiToken.objects.filter(lookup=lookup).update(expires_at=timezone.now())

    # then it is refused with a code of its own
    response = Client().get("/api/v1/devices/", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "token_expired"
    assert response["WWW-Authenticate"] == "Bearer"


# --- api_token_create ---------------------------------------------------------------------


def _command(*argv: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("api_token_create", *argv, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def _token_row(full: str) -> ApiToken:
    return ApiToken.objects.get(lookup=full[len(TOKEN_PREFIX) :].split("_")[0])


def test_a_token_for_an_operator_adds_nothing_to_the_account(db: None) -> None:
    # given an operator's account: staff, a password, no model permissions
    User.objects.create_user("operator", password="a-long-password-1", is_staff=True)

    # when a publish token is made for it
    full, err = _command("--user", "operator", "--scope", "publish", "--model", "kws")

    # then the account is as it was, the command says the token cannot publish, and the
    # token cannot
    operator = User.objects.get(username="operator")
    assert not operator.user_permissions.exists()
    assert "lacks ota.add_artifact" in err
    response = Client().get("/api/v1/models/", headers={"Authorization": f"Bearer {full}"})
    assert response.status_code == 403


def test_a_superusers_fleet_read_token_has_no_other_right(db: None) -> None:
    User.objects.create_superuser("root", password="a-long-password-1")
    full, _ = _command("--user", "root", "--scope", "fleet:read")
    headers = {"Authorization": f"Bearer {full}"}

    assert Client().get("/api/v1/devices/", headers=headers).status_code == 200
    for path in ("models/kws/publish", "rollouts/", "devices/dev-1/revoke", "enrollment-tokens"):
        response = Client().post(f"/api/v1/{path}", {}, headers=headers)
        assert response.status_code == 403, path


def test_a_new_service_account_gets_what_its_scopes_need(db: None) -> None:
    full, err = _command("--user", "ci-kws", "--scope", "publish", "--model", "kws")

    user = User.objects.get(username="ci-kws")
    assert not user.has_usable_password()
    assert not user.is_staff
    assert user.get_all_permissions() == {"ota.add_artifact", "ota.view_artifact", "ota.view_model"}
    row = _token_row(full)
    assert (row.scopes, row.model_names, row.expires_at) == (["publish"], ["kws"], None)
    assert err == ""


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-scope"),
        pytest.param(["--scope", "admin"], id="unknown-scope"),
        pytest.param(["--scope", "publish"], id="publish-without-a-model"),
        pytest.param(["--scope", "fleet:read", "--model", "kws"], id="model-without-its-scope"),
        pytest.param(["--scope", "publish", "--model", "KWS\n"], id="bad-model-name"),
        pytest.param(["--scope", "fleet:read", "--expires", "soon"], id="bad-expiry"),
        pytest.param(["--scope", "fleet:read", "--expires", "2001-01-01"], id="past-expiry"),
    ],
)
def test_a_refused_token_leaves_nothing_behind(argv: list[str], db: None) -> None:
    with pytest.raises(CommandError):
        _command("--user", "new-account", *argv)

    assert not User.objects.filter(username="new-account").exists()
    assert not ApiToken.objects.exists()


@pytest.mark.parametrize(
    ("expires", "delta"),
    [("90d", timedelta(days=90)), ("12h", timedelta(hours=12))],
)
def test_expires_takes_a_duration(expires: str, delta: timedelta, db: None) -> None:
    full, _ = _command("--scope", "fleet:read", "--expires", expires)

    expires_at = _token_row(full).expires_at
    assert expires_at is not None
    assert abs(expires_at - (timezone.now() + delta)) < timedelta(minutes=1)


def test_expires_takes_a_date(db: None) -> None:
    full, _ = _command("--scope", "fleet:read", "--expires", "2099-06-30")

    assert _token_row(full).expires_at == datetime(2099, 6, 30, tzinfo=UTC)


# --- the migration --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_tokens_made_before_scopes_keep_their_rights() -> None:
    executor = MigrationExecutor(connection)
    before = [("fleet", "0009_desired_outbox")]
    after = [("fleet", "0010_api_token_scopes")]
    leaves = executor.loader.graph.leaf_nodes()
    try:
        # given a token from before scopes
        executor.migrate(before)
        apps = executor.loader.project_state(before).apps
        old_user = apps.get_model("auth", "User").objects.create(username="old-ci")
        apps.get_model("fleet", "ApiToken").objects.create(
            user=old_user, name="old", lookup="0123456789ab", secret_hash="0" * 64
        )

        # when the database is migrated
        executor = MigrationExecutor(connection)
        executor.migrate(after)

        # then it has every right of its user, as before
        apps = executor.loader.project_state(after).apps
        row = apps.get_model("fleet", "ApiToken").objects.get(lookup="0123456789ab")
        assert (row.scopes, row.model_names, row.expires_at) == (["user"], ["*"], None)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)
