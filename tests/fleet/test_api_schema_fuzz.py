"""The REST API against its own OpenAPI schema (schemathesis): against a live server with
a seeded fleet, as an operator and as CI, no request gets a 5xx and no response breaks
the schema (status codes, content types, bodies). Slow: `-m schema` (.ci/run runs it)."""

import os
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from api_seed import api_seed
from director_keys import own_director_key
from hypothesis import HealthCheck, Phase

pytestmark = [pytest.mark.schema, pytest.mark.timeout(900)]

# Examples per operation and identity; the whole set stays within a few minutes.
EXAMPLES = int(os.environ.get("FLEET_SCHEMA_EXAMPLES", "25"))


def _checks() -> list[Any]:
    return [
        schemathesis.checks.not_a_server_error,
        schemathesis.checks.status_code_conformance,
        schemathesis.checks.content_type_conformance,
        schemathesis.checks.response_schema_conformance,
    ]


def _describe(exc: BaseException) -> str:
    """The failure and what it wraps (hypothesis reports a flaky one as a group)."""
    parts = [str(exc)]
    for inner in getattr(exc, "exceptions", ()):
        parts.append(_describe(inner))
    return "\n".join(parts)


@pytest.mark.parametrize("who", ["operator", "ci"])
def test_api_conforms_to_its_schema(
    who: str, live_server, transactional_db, storage_dirs, settings, tmp_path
) -> None:
    own_director_key(settings, tmp_path)
    seeded = api_seed(artifact_storage=True)
    token = seeded.operator_token if who == "operator" else seeded.ci_token
    auth = {"Authorization": f"Bearer {token}"}
    raw = requests.get(f"{live_server.url}/api/schema/?format=json", headers=auth, timeout=30)
    raw.raise_for_status()
    schema = schemathesis.openapi.from_dict(raw.json())
    session = requests.Session()
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err fails the test here
        operations += 1
        if os.environ.get("FLEET_SCHEMA_ONLY", "") not in operation.label:
            continue

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=live_server.url, session=session, headers=auth, checks=_checks()
            )

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failures are reported
            failures.append(f"{operation.label}: {_describe(exc)}"[:4000])
    assert operations > 30
    assert not failures, "\n\n".join(failures)
