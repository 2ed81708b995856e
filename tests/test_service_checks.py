"""A missing service or package skips only through tests/service_check.py, which fails
under CI instead: no test skips on its own with ``pytest.skip``, ``importorskip`` or a
``skipif`` marker."""

import re
from pathlib import Path

import pytest
import service_check

TESTS = Path(__file__).resolve().parent
SKIPPING = re.compile(r"\bpytest\.(skip\(|importorskip\(|mark\.skipif\b|mark\.skip\b)")


def test_no_test_skips_around_service_check() -> None:
    found = [
        f"{path.relative_to(TESTS)}:{number}: {line.strip()}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.name not in {"service_check.py", Path(__file__).name}
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SKIPPING.search(line)
    ]
    assert found == []


def test_a_missing_package_skips_on_a_developer_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_check, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="no_such_package_xyz is not available"):
        service_check.require_module("no_such_package_xyz", "pip install it")


def test_a_missing_package_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_check, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="required under CI: pip install it"):
        service_check.require_module("no_such_package_xyz", "pip install it")


def test_sqlite_fails_a_postgresql_test_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_check, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is required under CI"):
        service_check.require_postgresql("sqlite")
    service_check.require_postgresql("postgresql")  # nothing to say


def test_an_installed_package_is_returned() -> None:
    assert service_check.require_module("json", "-").dumps([]) == "[]"
