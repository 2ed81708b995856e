"""Integration tests need real services: skip without one on a developer machine,
fail under CI (CI=true). Importable from any test module (tests/ is on sys.path)."""

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_service(available: bool, what: str, install: str) -> None:
    """Skip on a developer machine without the service; under CI a missing one fails."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI: {install}")
    pytest.skip(f"{what} is not available: {install}")
