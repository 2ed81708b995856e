"""The fault suite's failure report (tests/ota/fault_rig.py): a scenario that fails on a
running system has its logs copied out of the session's temporary directory before the
next scenario and the teardown change or delete them, and the report says where."""

from typing import Any

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and report.when == "call":
        system = getattr(item, "funcargs", {}).get("system")
        keep_logs = getattr(system, "keep_logs", None)
        if keep_logs is not None:
            try:
                where = f"kept in {keep_logs(item.name)}"
            except Exception as exc:  # keeping them must not hide the failure itself
                where = f"could not be kept: {exc!r}"
            report.sections.append(("fault rig logs", f"this scenario's logs were {where}"))
    return report
