"""The devices list and the audit log in a real browser (Debian's chromium): the admin's
action script still drives the list's boxes (counter, select all, run), the filters are
links, and the audit log's times are rewritten into the operator's time zone."""

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from rollout_helpers import devices
from test_dashboard_browser import _keys, _logged_in, _shot, browser  # noqa: F401 - fixtures

from fleet.audit import audit_record
from fleet.models import Device

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PASSWORD = "correct horse battery staple"  # noqa: S105 - a test account's


def _editor() -> User:
    account = User.objects.create_user("op", password=PASSWORD, is_staff=True)
    for codename in ("view_device", "change_device", "view_auditevent"):
        account.user_permissions.add(Permission.objects.get(codename=codename))
    return account


def test_devices_list_selects_and_revokes(browser, live_server, tmp_path):  # noqa: F811
    fleet = devices(3)
    Device.objects.filter(pk=fleet[2].pk).update(online=True)
    _editor()
    page: Any = _logged_in(browser, live_server)
    page.goto(f"{live_server.url}/admin/fleet/device/")
    assert page.locator("#result_list tbody tr").count() == 3
    counter = page.locator(".action-counter")
    assert counter.inner_text() == "0 of 3 selected"
    page.locator("#action-toggle").check()
    assert counter.inner_text() == "3 of 3 selected"
    page.locator("#action-toggle").uncheck()
    page.locator(f'input.action-select[value="{fleet[1].pk}"]').check()
    assert counter.inner_text() == "1 of 3 selected"
    _shot(page, "dashboard-devices-selected", tmp_path)
    page.select_option('select[name="action"]', "revoke")
    page.get_by_role("button", name="Run").click()
    page.locator("ul.messagelist").wait_for()
    assert "Revoked 1 device(s)." in page.locator("ul.messagelist").inner_text()
    assert Device.objects.get(pk=fleet[1].pk).revoked_at is not None
    assert Device.objects.filter(revoked_at__isnull=False).count() == 1

    # a filter is a link; the search keeps it
    page.locator('#changelist-filter details[data-filter-title="online"]').get_by_role(
        "link", name="Yes"
    ).click()
    page.wait_for_url("**/admin/fleet/device/?online__exact=1")
    assert page.locator("#result_list tbody tr").count() == 1
    page.fill("#searchbar", "dev-0000")
    page.locator("#changelist-search input[type=submit]").click()
    page.wait_for_url("**/admin/fleet/device/?q=dev-0000&online__exact=1")
    assert page.locator("#result_list tbody tr").count() == 1
    page.get_by_role("link", name="dev-00002").click()
    page.wait_for_url(f"**/admin/fleet/device/{fleet[2].pk}/change/")


def test_devices_list_sorts_by_its_headers(browser, live_server, tmp_path):  # noqa: F811
    fleet = devices(3)
    now = timezone.now()
    for minutes, device in zip((5, 600, 30), fleet, strict=True):
        Device.objects.filter(pk=device.pk).update(last_seen_at=now - timedelta(minutes=minutes))
    Device.objects.filter(pk=fleet[1].pk).update(online=True)
    _editor()
    page: Any = _logged_in(browser, live_server)
    page.goto(f"{live_server.url}/admin/fleet/device/?q=dev")

    def shown() -> list[str]:
        return page.locator("#result_list tbody th a").all_inner_texts()

    header = page.locator("#result_list thead th.column-last_seen_at")
    header.get_by_role("link", name="Last seen").click()
    page.wait_for_url("**/admin/fleet/device/?q=dev&o=6.1")  # the checkbox is column 0
    assert shown() == ["dev-00001", "dev-00002", "dev-00000"]  # heard from longest ago first
    assert header.get_attribute("class") == "sortable column-last_seen_at sorted ascending"
    header.get_by_role("link", name="Last seen").click()
    page.wait_for_url("**/admin/fleet/device/?q=dev&o=-6.1")
    assert shown() == ["dev-00000", "dev-00002", "dev-00001"]
    assert header.get_attribute("class") == "sortable column-last_seen_at sorted descending"
    _shot(page, "dashboard-devices-sorted", tmp_path)

    # a filter keeps the sort and the search
    page.locator('#changelist-filter details[data-filter-title="online"]').get_by_role(
        "link", name="No"
    ).click()
    page.wait_for_url("**/admin/fleet/device/?q=dev&online__exact=0&o=-6.1")
    assert shown() == ["dev-00000", "dev-00002"]


def test_audit_log_times_in_the_operators_zone(browser, live_server, tmp_path):  # noqa: F811
    _editor()
    audit_record(action="device.revoke", target="device dev-00001", reason="<b>stolen</b>")
    page: Any = _logged_in(browser, live_server, timezone_id="Asia/Tokyo")
    page.goto(f"{live_server.url}/admin/audit/")
    row = page.locator("#dash-audit-log tbody tr").first
    assert "revoked a device: device dev-00001" in row.inner_text()
    assert "<b>stolen</b>" in row.inner_text()  # shown as text, never markup
    shown = row.locator("time")
    utc = shown.get_attribute("title")
    assert utc is not None
    assert utc.endswith("UTC")
    assert "GMT+9" in shown.inner_text() or "JST" in shown.inner_text()
    _shot(page, "dashboard-audit-log-list", tmp_path)
