"""Start-up refuses bad settings with a message naming the variable to fix, and a
complete production environment starts.

Each case is a fresh interpreter running ``django.setup()``; the interpreters for all
cases are started together once per module, since each spends most of its time importing.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STRIPPED_PREFIXES = ("FLEET_", "DJANGO_", "AWS_", "CELERY_")
STRIPPED_NAMES = {"DATABASE_URL"}

SECRET = "production-secret-" + "x" * 40
SHORT_SECRET = "short-but-still-a-secret"
PRODUCTION = {
    "FLEET_MODE": "production",
    "DJANGO_SECRET_KEY": SECRET,
    "DJANGO_ALLOWED_HOSTS": "fleet.example.com",
    "DATABASE_URL": "postgres://fleet:pw@db.example.com:5432/fleet",
    "CELERY_BROKER_URL": "redis://broker.example.com:6379/0",
}


def _without(name: str) -> dict[str, str]:
    return {k: v for k, v in PRODUCTION.items() if k != name}


class Case(NamedTuple):
    env: dict[str, str]
    named: str | None  # the variable the refusal must name; None: start-up succeeds


CASES: dict[str, Case] = {
    "unknown-mode": Case({"FLEET_MODE": "bogus"}, "FLEET_MODE"),
    "production-bare": Case({"FLEET_MODE": "production"}, "DJANGO_SECRET_KEY"),
    "production-short-secret": Case(
        {**PRODUCTION, "DJANGO_SECRET_KEY": SHORT_SECRET}, "DJANGO_SECRET_KEY"
    ),
    "production-no-hosts": Case(_without("DJANGO_ALLOWED_HOSTS"), "DJANGO_ALLOWED_HOSTS"),
    "production-no-database": Case(_without("DATABASE_URL"), "DATABASE_URL"),
    "production-sqlite": Case({**PRODUCTION, "DATABASE_URL": "sqlite:///x"}, "DATABASE_URL"),
    "production-no-broker": Case(_without("CELERY_BROKER_URL"), "CELERY_BROKER_URL"),
    "s3-no-bucket": Case({"FLEET_STORAGE": "s3"}, "AWS_STORAGE_BUCKET_NAME"),
    "unknown-storage": Case({"FLEET_STORAGE": "ftp"}, "FLEET_STORAGE"),
    "bad-database-url": Case({"DATABASE_URL": "notaurl"}, "DATABASE_URL"),
    "not-an-integer": Case({"FLEET_MAX_ARTIFACT_BYTES": "abc"}, "FLEET_MAX_ARTIFACT_BYTES"),
    "below-minimum": Case({"FLEET_MAX_ARTIFACT_BYTES": "0"}, "FLEET_MAX_ARTIFACT_BYTES"),
    "not-a-boolean": Case({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG"),
    "production-complete": Case(PRODUCTION, None),
    "production-s3": Case(
        {
            **PRODUCTION,
            "FLEET_STORAGE": "s3",
            "AWS_STORAGE_BUCKET_NAME": "fleet-artifacts",
            "AWS_S3_REGION_NAME": "eu-west-1",
        },
        None,
    ),
}
REFUSED = [name for name, case in CASES.items() if case.named is not None]
STARTED = [name for name, case in CASES.items() if case.named is None]


def _start(data_dir: Path, env_vars: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(STRIPPED_PREFIXES) and k not in STRIPPED_NAMES
    }
    env.update(
        DJANGO_SETTINGS_MODULE="fleet.settings",
        FLEET_DATA_DIR=str(data_dir),
        PYTHONPATH=str(REPO_ROOT),
    )
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str]]:
    dirs = {name: tmp_path_factory.mktemp(name) / "data" for name in CASES}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_start, dirs[name], CASES[name].env) for name in CASES}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_settings_stop_start_up_naming_the_variable(
    outcomes: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    # given CASES[case].env; when started
    result = outcomes[case]

    # then start-up fails on the settings, and the message's last line names the variable
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured: "), result.stderr
    named = CASES[case].named
    assert named is not None
    assert named in last_line, result.stderr
    # and a secret key is never echoed back
    for secret in (SECRET, SHORT_SECRET):
        assert secret not in result.stderr


@pytest.mark.parametrize("case", STARTED)
def test_valid_settings_start(
    outcomes: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    result = outcomes[case]

    assert result.returncode == 0, result.stderr
    assert "ImproperlyConfigured" not in result.stderr
