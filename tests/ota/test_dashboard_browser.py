"""The operator dashboard in a real browser (Playwright driving Debian's chromium, never a
downloaded one): the rollout page's progress moves without a reload when a device reports,
and aborting asks for a confirmation and a reason. Marker ``browser``: run by .ci/run."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections
from rollout_helpers import (
    ab,
    artifact,
    devices,
    evaluate,
    phased,
    report,
    rows,
    use_own_director_key,
)
from service_check import require_module, require_service

from device_agent.protocol.messages import Phase
from fleet.models import Device
from ota.models import Rollout, RolloutAuditEvent, RolloutStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install chromium; pip install playwright (the package only: no browser download)"
PASSWORD = "correct horse battery staple"  # noqa: S105 - a test account's
DEADLINE_MS = 15_000


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


@pytest.fixture
def browser(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Chromium, closed before the live server stops (its pages poll the server)."""
    sync_api = require_module("playwright.sync_api", INSTALL)
    require_service(os.access(CHROMIUM, os.X_OK), f"chromium at {CHROMIUM}", INSTALL)
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # (device reports, assertions) stay synchronous and must not be refused for it.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield instance
        finally:
            instance.close()
            # The test's queries ran while Playwright's loop was current, on a connection
            # of their own that the test database's teardown would find still open.
            connections.close_all()


def _operator() -> User:
    account = User.objects.create_user("op", password=PASSWORD, is_staff=True)
    for codename in ("view_rollout", "control_rollout", "view_device"):
        account.user_permissions.add(Permission.objects.get(codename=codename))
    return account


def _shot(page: Any, name: str, tmp_path: Path) -> None:
    """Every page is photographed: into $FLEET_SCREENSHOTS (docs/img for the operator
    guide) when set, else next to the test."""
    folder = Path(os.environ.get("FLEET_SCREENSHOTS") or tmp_path)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _logged_in(browser: Any, live_server: Any, timezone_id: str = "UTC") -> Any:
    page = browser.new_page(timezone_id=timezone_id, viewport={"width": 1280, "height": 900})
    page.set_default_timeout(DEADLINE_MS)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "op")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    return page


def test_progress_bar_moves_without_reload(browser, live_server, tmp_path):
    artifact("2.0.0")
    devices(2)
    _operator()
    rollout = phased()
    evaluate(rollout)
    page = _logged_in(browser, live_server)
    page.goto(f"{live_server.url}/admin/ota/rollout/{rollout.pk}/change/")
    bar = page.locator("#dash-live .dash-bar")
    assert bar.locator('[data-state="notified"]').get_attribute("data-count") == "2"
    assert bar.locator('[data-state="succeeded"]').count() == 0
    assert page.get_by_role("button", name="Pause").count() == 1
    page.evaluate("window.dashMarker = 'same page'")

    for row in rows(rollout):
        report(row.device, rollout, Phase.COMMITTED)
    evaluate(rollout)

    succeeded = bar.locator('[data-state="succeeded"][data-count="2"]')
    succeeded.wait_for(state="attached", timeout=DEADLINE_MS)
    width = succeeded.evaluate("el => el.getBoundingClientRect().width")
    assert width > 0
    # The rollout completed: its badge and the actions it allows follow, still no reload.
    page.locator("#dash-live .dash-badge-completed").wait_for(timeout=DEADLINE_MS)
    assert page.get_by_role("button", name="Pause").count() == 0
    # The devices table follows too.
    states = page.locator("#dash-devices tbody tr td:nth-child(4)")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#dash-devices tbody tr td:nth-child(4)')]"
        ".every(td => td.textContent.trim() === 'Succeeded')"
    )
    assert states.count() == 2
    assert page.evaluate("window.dashMarker") == "same page"  # no reload happened
    _shot(page, "dashboard-rollout", tmp_path)


def test_abort_asks_for_confirmation_and_a_reason(browser, live_server, tmp_path):
    artifact("2.0.0")
    devices(2)
    _operator()
    rollout = phased()
    page = _logged_in(browser, live_server)
    page.goto(f"{live_server.url}/admin/ota/rollout/{rollout.pk}/change/")
    dialog = page.locator("#dash-dialog-abort")
    assert not dialog.is_visible()

    page.get_by_role("button", name="Abort and roll back").click()
    assert dialog.is_visible()
    _shot(page, "dashboard-abort-dialog", tmp_path)
    confirm = dialog.get_by_role("button", name="Confirm: abort and roll back")
    confirm.click()  # no reason: the browser refuses to submit
    assert dialog.is_visible()
    assert dialog.locator("textarea:invalid").count() == 1
    dialog.get_by_role("button", name="Cancel").click()
    assert not dialog.is_visible()
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING

    page.get_by_role("button", name="Abort and roll back").click()
    dialog.locator("textarea").fill("the new model mishears wake words")
    confirm.click()
    page.locator(".messagelist").wait_for()

    assert "abort done" in page.locator(".messagelist").inner_text()
    assert Rollout.objects.get(pk=rollout.pk).status in {"aborted", "rolled_back"}
    audit = RolloutAuditEvent.objects.get(rollout=rollout, to_status="aborted")
    assert (audit.actor_name, audit.reason) == ("op", "the new model mishears wake words")
    assert "the new model mishears wake words" in page.locator("#dash-audit").inner_text()
    _shot(page, "dashboard-rollout-aborted", tmp_path)


def test_overview_matches_the_database_in_the_operators_time_zone(browser, live_server, tmp_path):
    artifact("2.0.0")
    devices(3)
    Device.objects.filter(device_id="dev-00000").update(
        online=True, reported={"models": [{"name": "kws", "version": "1.0.0"}]}
    )
    _operator()
    rollout = phased()
    evaluate(rollout)
    page = _logged_in(browser, live_server, timezone_id="Asia/Tokyo")

    assert page.locator("#dash-total strong").inner_text() == str(Device.objects.count())
    assert page.locator("#dash-online strong").inner_text() == "1"
    assert page.locator("svg.dash-chart").count() == 2  # hardware, versions (no failures)
    assert page.locator(f'a[href="/admin/ota/rollout/{rollout.pk}/change/"]').count() == 1
    _shot(page, "dashboard-overview", tmp_path)

    page.goto(f"{live_server.url}/admin/ota/rollout/{rollout.pk}/change/")
    shown = page.locator("#dash-audit time").first
    utc = shown.get_attribute("title")
    assert utc is not None
    assert utc.endswith("UTC")
    assert shown.inner_text() != utc
    assert "GMT+9" in shown.inner_text() or "JST" in shown.inner_text()


def test_the_ab_page_shows_the_losing_arm_and_why(browser, live_server, tmp_path, settings):
    settings.FLEET_ROLLOUT_TELEMETRY_SOURCE = "test_dashboard_comparison.SOURCE"
    artifact("1.0.0")
    artifact("2.0.0")
    devices(4)
    _operator()
    rollout = ab(
        arms=[
            {"name": "A", "version": "1.0.0", "baseline": True},
            {"name": "B", "version": "2.0.0"},
        ],
        policy={
            "telemetry_gates": [
                {"metric": "latency_ms", "statistic": "p95", "max_relative_change": 0.1}
            ]
        },
    )
    evaluate(rollout)
    (cmp,) = Rollout.objects.get(pk=rollout.pk).gate_figures["gates"][1]["figures"]["comparisons"]
    page = _logged_in(browser, live_server)
    page.goto(f"{live_server.url}/admin/ota/rollout/{rollout.pk}/change/")

    result = page.locator("#dash-live .dash-outcome-loses .dash-compare-result")
    assert result.inner_text() == (
        f"B's p95 latency_ms is {cmp['relative_change'] * 100:.0f} % higher than A's (worse), "
        f"p = {cmp['p_worse']:.2g}: B loses."
    )
    boxes = page.locator("#dash-live svg.dash-comparison g.dash-arm-figure")
    assert [boxes.nth(i).get_attribute("data-arm") for i in range(boxes.count())] == ["A", "B"]
    assert page.locator("#dash-live .dash-badge-paused").count() == 1  # the gate paused it
    _shot(page, "dashboard-ab", tmp_path)
