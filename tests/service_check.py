"""Integration tests need real services: skip without one on a developer machine,
fail under CI (CI=true). Importable from any test module (tests/ is on sys.path).

Never skip with a bare ``pytest.skip`` or ``pytest.importorskip`` for something missing:
go through these, so that CI fails instead (tests/test_service_checks.py looks)."""

import importlib
import os
from types import ModuleType

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
# Set by conftest for the SQLite run of the database-specific tests (-m db_both, .ci/run),
# whose PostgreSQL run is the everyday one.
SQLITE_RUN_OF_DB_BOTH = False


def require_service(available: bool, what: str, install: str) -> None:
    """Skip on a developer machine without the service; under CI a missing one fails."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI: {install}")
    pytest.skip(f"{what} is not available: {install}")


def require_module(name: str, install: str) -> ModuleType:
    """The module ``name``, as ``pytest.importorskip`` but failing under CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        require_service(False, f"the Python package {name}", install)
        raise  # pragma: no cover - require_service skipped or failed


def require_postgresql(vendor: str) -> None:
    """For tests of PostgreSQL's own behaviour (plans, locks, LISTEN/NOTIFY)."""
    if SQLITE_RUN_OF_DB_BOTH and vendor != "postgresql":
        pytest.skip("PostgreSQL's own behaviour: covered by the PostgreSQL run of -m db_both")
    require_service(
        vendor == "postgresql",
        "PostgreSQL",
        "run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/fleet_<name>",
    )
