"""Shared fixtures: an initialised TUF repository in a temporary keys/artifact directory,
a registered model with a release key, and a CI token."""

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import service_check
from django.db import connection
from pytest_django import Settings
from release_keys import ReleaseKeyFiles, make_release_key
from service_check import IN_CI

if TYPE_CHECKING:
    from mqtt_broker import MosquittoBroker

    from ota.models import Model

# Live-server threads must not keep connections open past a test (teardown drops the DB).
os.environ.setdefault("FLEET_DB_CONN_MAX_AGE", "0")


def pytest_sessionstart(session: pytest.Session) -> None:
    # The database-specific tests (-m db_both) run on SQLite too, the developer default.
    on_postgresql = os.environ.get("DATABASE_URL", "").startswith("postgres")
    if session.config.getoption("markexpr") == "db_both" and not on_postgresql:
        service_check.SQLITE_RUN_OF_DB_BOTH = True
    elif IN_CI and not on_postgresql:
        raise pytest.UsageError("CI=true: the suite must run on PostgreSQL (set DATABASE_URL)")


@pytest.fixture(autouse=True)
def _own_cache(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test counts throttles in a cache of its own (the default is under var/)."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(tmp_path_factory.mktemp("cache")),
        }
    }


@pytest.fixture
def storage_dirs(settings: Settings, tmp_path: Path) -> Path:
    settings.FLEET_KEYS_DIR = tmp_path / "keys"
    artifacts = tmp_path / "artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(artifacts)},
        },
    }
    settings.FLEET_STORAGE = "local"
    return tmp_path


@pytest.fixture
def repo(storage_dirs: Path, db: None) -> Path:
    from ota.repository import repository_initialize

    repository_initialize(generate_missing_keys=True)
    return storage_dirs


@pytest.fixture
def release_key(tmp_path: Path) -> ReleaseKeyFiles:
    return make_release_key(tmp_path / "ci-key")


@pytest.fixture
def kws(repo: Path, release_key: ReleaseKeyFiles) -> "Model":
    from ota.repository import model_register, signer_for

    return model_register(
        name="kws",
        keys=[release_key.signer.public_key],
        threshold=1,
        targets_signer=signer_for("targets"),
    )


@pytest.fixture
def ci_token(db: None) -> str:
    from fleet.auth import ALL_MODELS, SCOPE_PUBLISH, SCOPE_ROLLOUTS_CREATE
    from fleet.services import api_token_create, service_account_get_or_create

    scopes = [SCOPE_PUBLISH, SCOPE_ROLLOUTS_CREATE]
    user = service_account_get_or_create(username="ci", scopes=scopes)
    return api_token_create(user=user, name="ci", scopes=scopes, model_names=[ALL_MODELS])[1]


@pytest.fixture
def db_vendor(db: None) -> str:
    return connection.vendor


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator["MosquittoBroker"]:
    """A plain (anonymous, no TLS) Mosquitto of this test's own, with persistence."""
    from mqtt_broker import MosquittoBroker

    broker = MosquittoBroker(tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def esp32_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ESP32 client's host build (tests/esp32_build.py), made once for the whole run:
    the tests that use it only run its binaries and CTest, they change nothing in it."""
    from esp32_build import esp32_host_build

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    build = root / "esp32-host-build"
    with (root / "esp32-host-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker builds, the others wait and reuse it
        if not (build / "fleet-ota-posix").is_file():
            esp32_host_build(build)
    return build
