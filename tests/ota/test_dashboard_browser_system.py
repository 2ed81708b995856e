"""An operator's round trip through the dashboard, in a real browser (Playwright driving
Debian's chromium, never a downloaded one), against the whole running system of
tests/ota/rollout_system.py: web server, bridge, Celery worker and real simulated agents.

The operator logs in, reads the overview, creates a phased rollout with the New rollout
form, watches its progress bar advance without reloading, aborts it with a reason, sees
the devices back on the previous version and the reason in the audit log. Every page is
photographed (into $FLEET_SCREENSHOTS when set: docs/img for the operator guide).
Marker ``browser``: run by .ci/run."""

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rollout_onnx import chain_onnx, selftest_meta
from rollout_system import FleetSystem, wait_until
from service_check import require_module, require_service

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]
CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install chromium; pip install playwright (the package only: no browser download)"
PASSWORD = "correct horse battery staple"  # noqa: S105 - a test account's
DEVICES = 4
DEADLINE_MS = 20_000
REASON = "the new model mishears wake words in the cold room"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetSystem]:
    fleet = FleetSystem(tmp_path_factory.mktemp("dashboard"), devices=DEVICES)
    with fleet.running():
        fleet.manage(
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model; "
            "u = get_user_model().objects.get(username='operator'); "
            f"u.set_password({PASSWORD!r}); u.save()",
        )
        yield fleet


@pytest.fixture
def page(system: FleetSystem) -> Iterator[Any]:
    sync_api = require_module("playwright.sync_api", INSTALL)
    require_service(os.access(CHROMIUM, os.X_OK), f"chromium at {CHROMIUM}", INSTALL)
    # gunicorn serves no static files: as the TLS proxy does in production (operator
    # guide), /static/ is answered from what manage.py collectstatic gathered.
    system.manage("collectstatic", "--noinput")
    static = (system.data / "static").resolve()

    def serve_static(route: Any) -> None:
        name = route.request.url.split("/static/", 1)[1].split("?", 1)[0]
        path = (static / name).resolve()
        if path.is_relative_to(static) and path.is_file():
            route.fulfill(path=str(path))
        else:
            route.fulfill(status=404, body="not found")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
            tab.route(re.compile(r"^http://127\.0\.0\.1:\d+/static/"), serve_static)
            tab.set_default_timeout(DEADLINE_MS)
            tab.goto(f"{system.base}/admin/login/")
            tab.fill("#id_username", "operator")
            tab.fill("#id_password", PASSWORD)
            tab.click("input[type=submit]")
            tab.wait_for_url(f"{system.base}/admin/")
            yield tab
        finally:
            browser.close()


def _shot(tab: Any, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("FLEET_SCREENSHOTS") or tmp_path)
    tab.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _publish(system: FleetSystem, tmp_path: Path, version: str, bias: float) -> None:
    data, selftest = chain_onnx(layers=1, bias=bias)
    path = tmp_path / f"vision-{version}.onnx"
    path.write_bytes(data)
    system.publish(path, name="vision", version=version, meta=[selftest_meta(selftest)])


def _everyone_runs(system: FleetSystem, version: str, timeout: float = 300) -> None:
    def done() -> bool:
        return all(system.reported_version(d, "vision") == version for d in system.device_ids())

    wait_until(done, f"every device to report vision {version}", timeout)


def test_an_operator_creates_watches_and_aborts_a_rollout(
    system: FleetSystem, page: Any, tmp_path: Path
) -> None:
    # given: every device runs vision 1.0.0, and 2.0.0 is published
    system.model_register("vision")
    _publish(system, tmp_path, "1.0.0", 0.5)
    first = system.rollout_create(
        model="vision",
        strategy="phased",
        version="1.0.0",
        selection={"all": True},
        policy={"rate_per_minute": 600, "min_finished": 1},
    )
    system.post(f"/api/v1/rollouts/{first['id']}/start", {"reason": "first install"})
    wait_until(lambda: system.rollout_status(first["id"]) == "completed", "the first install", 300)
    _everyone_runs(system, "1.0.0")
    _publish(system, tmp_path, "2.0.0", 0.75)

    # the overview's figures are the database's
    page.goto(f"{system.base}/admin/")
    assert page.locator("#dash-total strong").inner_text() == str(DEVICES)
    online = system.scalars("SELECT count(*) FROM fleet_device WHERE online")[0]
    assert page.locator("#dash-online strong").inner_text() == str(online)
    _shot(page, "dashboard-overview", tmp_path)

    # when: the operator creates a phased rollout of 2.0.0 with the form
    page.get_by_role("link", name="New rollout").click()
    page.select_option("#id_model", "vision")
    page.fill("#id_version", "2.0.0")
    page.check("#id_select_all")
    for i, (percent, bake) in enumerate([("50", "30"), ("100", ""), ("", "")]):
        page.fill(f"input[name=stage_percent_{i}]", percent)
        page.fill(f"input[name=stage_bake_{i}]", bake)
    page.fill("#id_rate_per_minute", "600")
    page.fill("#id_min_finished", "1")
    page.fill("#id_description", "vision 2.0.0 to half the fleet first")
    page.check("input[name=then][value=start]")
    preview = page.locator("#dash-preview")
    preview.filter(has_text=f"Targets {DEVICES} enabled devices").wait_for()
    assert f"{DEVICES} of them can take 2.0.0." in preview.inner_text()
    _shot(page, "dashboard-new-rollout", tmp_path)
    page.get_by_role("button", name="Create rollout").click()
    page.wait_for_url(re.compile(r".*/admin/ota/rollout/\d+/change/$"))
    pk = re.search(r"/rollout/(\d+)/change/", page.url)
    assert pk is not None
    rollout_id = f"r-{pk[1]}"
    assert system.rollout_status(rollout_id) == "running"
    assert "created (running)" in page.locator(".messagelist").inner_text()

    # then: its first stage's progress advances on the open page, without a reload
    page.evaluate("window.dashMarker = 'same page'")
    succeeded = page.locator('#dash-live .dash-bar [data-state="succeeded"][data-count="2"]')
    succeeded.wait_for(state="attached", timeout=240_000)
    assert page.evaluate("window.dashMarker") == "same page"
    stage_devices = [d for d in system.rollout_devices(rollout_id) if d["state"] == "succeeded"]
    assert len(stage_devices) == 2
    _shot(page, "dashboard-rollout", tmp_path)

    # when: the operator aborts it (while stage 1 bakes), giving a reason
    page.get_by_role("button", name="Abort and roll back").click()
    dialog = page.locator("#dash-dialog-abort")
    dialog.locator("textarea").fill(REASON)
    _shot(page, "dashboard-abort-dialog", tmp_path)
    dialog.get_by_role("button", name="Confirm: abort and roll back").click()
    page.locator(".messagelist").filter(has_text="abort done").wait_for()

    # then: the devices are back on 1.0.0 and the rollout says so
    wait_until(
        lambda: system.rollout_status(rollout_id) == "rolled_back", f"{rollout_id} rolled back", 300
    )
    _everyone_runs(system, "1.0.0")
    page.locator("#dash-live .dash-badge-rolled_back").wait_for(timeout=DEADLINE_MS)
    _shot(page, "dashboard-rollout-aborted", tmp_path)

    # and the reason is in the audit log, by whom
    page.goto(f"{system.base}/admin/audit/")
    row = page.locator("#dash-audit-log tbody tr").filter(has_text=REASON)
    assert row.count() == 1
    assert "operator" in row.inner_text()
    assert f"moved rollout {rollout_id} from running to aborted" in row.inner_text()
    _shot(page, "dashboard-audit-log", tmp_path)

    # the other pages, photographed for the operator guide
    touched = stage_devices[0]["device"]
    page.goto(f"{system.base}/admin/fleet/device/?q={touched}")
    page.get_by_role("link", name=touched).click()
    assert "Runs vision 1.0.0." in page.locator("#dash-runs").inner_text()
    history = page.locator("#dash-history li")
    assert (
        history.filter(has_text="rolled_back").count()
        + history.filter(has_text="committed").count()
        >= 2
    )
    assert page.locator("#dash-touched").get_by_role("link", name=rollout_id).count() == 1
    _shot(page, "dashboard-device", tmp_path)
    page.goto(f"{system.base}/admin/fleet/device/")
    _shot(page, "dashboard-devices", tmp_path)
    model_pk = system.scalars("SELECT id FROM ota_model WHERE name = 'vision'")[0]
    page.goto(f"{system.base}/admin/ota/model/{model_pk}/change/")
    assert page.locator('#dash-versions tr[data-version="1.0.0"] .dash-devices').inner_text() == (
        str(DEVICES)
    )
    _shot(page, "dashboard-model", tmp_path)
