"""The operator's rollout page in the admin: a read-only view of a rollout (progress by
arm and state, gates, stages, failures, devices, audit) and its actions, each confirmed
with a reason, going through ota/rollouts.py (audited) and needing its permission."""

import re

import pytest
from django.test import Client
from rollout_helpers import (
    ab,
    artifact,
    devices,
    evaluate,
    phased,
    report,
    rows,
    use_own_director_key,
    user,
)

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase
from ota.models import Rollout, RolloutAuditEvent, RolloutStatus

pytestmark = pytest.mark.django_db
VIEWER_PERMS = ("ota.view_rollout", "ota.view_rolloutdevice", "fleet.view_device")
OPERATOR_PERMS = (*VIEWER_PERMS, "ota.control_rollout", "ota.start_rollout")


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _admin(*perms: str, name: str = "desk") -> Client:
    client = Client()
    client.force_login(user(name, *perms, staff=True))
    return client


def _page(rollout: Rollout) -> str:
    return f"/admin/ota/rollout/{rollout.pk}/change/"


def _act(client: Client, rollout: Rollout, action: str, reason: str = "looks wrong", **extra):
    return client.post(
        f"/admin/ota/rollout/{rollout.pk}/act/",
        {"action": action, "reason": reason, **extra},
        follow=True,
    )


def test_rollout_page_reads_as_a_dashboard_not_a_form():
    artifact("2.0.0")
    fleet = devices(4)
    rollout = phased(stages=[{"percent": 50, "bake_minutes": 30}, {"percent": 100}])
    evaluate(rollout)
    notified = [r.device for r in rows(rollout) if r.state == "notified"]
    report(notified[0], rollout, Phase.DOWNLOADING)
    report(notified[1], rollout, Phase.FAILED, code=ErrorCode.HASH_MISMATCH)
    evaluate(rollout)
    client = _admin(*OPERATOR_PERMS)

    page = client.get(_page(rollout))

    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="dash-badge dash-badge-running"' in html
    assert 'data-state="downloading" data-count="1"' in html
    assert 'data-state="failed" data-count="1"' in html
    assert 'data-state="pending" data-count="2"' in html
    assert "hash_mismatch" in html  # failures by error code
    assert "install failure rate" in html  # the gate, value against threshold
    assert "2 of 4" in html
    assert "4 of 4" in html
    assert "Targets every enabled device of the fleet." in html
    assert "On a gate breach the rollout is paused." in html
    assert "{&quot;" not in html
    assert '{"' not in html
    assert 'name="_save"' not in html
    assert "Save" not in html
    assert fleet[0].device_id in html or notified[0].device_id in html
    assert f"/admin/fleet/device/{notified[0].pk}/change/" in html
    for label in ("Pause", "Abort and roll back"):
        assert label in html
    assert "Resume</button>" not in html  # not possible while running


def test_progress_fragment_follows_device_reports():
    artifact("2.0.0")
    devices(2)
    rollout = phased()
    evaluate(rollout)
    client = _admin(*VIEWER_PERMS)
    url = f"/admin/ota/rollout/{rollout.pk}/progress/"
    assert 'data-state="notified" data-count="2"' in client.get(url).content.decode()

    for row in rows(rollout):
        report(row.device, rollout, Phase.COMMITTED)
    evaluate(rollout)

    html = client.get(url).content.decode()
    assert 'data-state="succeeded" data-count="2"' in html
    assert "<html" not in html  # a fragment, not a page


def test_devices_table_filters_and_pages():
    artifact("2.0.0")
    devices(60)
    rollout = phased()
    evaluate(rollout)
    failing = rows(rollout, state="notified")[0].device
    report(failing, rollout, Phase.FAILED, code=ErrorCode.HASH_MISMATCH)
    evaluate(rollout)
    client = _admin(*VIEWER_PERMS)

    first = client.get(_page(rollout)).content.decode()
    assert "page 1 of 2 (60 devices)" in first
    second = client.get(_page(rollout) + "?page=2").content.decode()
    assert "page 2 of 2" in second
    by_code = client.get(_page(rollout) + "?code=hash_mismatch").content.decode()
    assert len(re.findall(r"/admin/fleet/device/\d+/change/", by_code)) == 1
    assert failing.device_id in by_code
    by_state = client.get(_page(rollout) + "?state=failed&arm=main").content.decode()
    assert failing.device_id in by_state
    assert client.get(_page(rollout) + "?arm=nope").content.decode().count("No device matches") == 1
    assert client.get(_page(rollout) + "?page=x%0A").status_code == 200  # bad page: first one


def test_operator_pauses_resumes_and_aborts_with_reasons():
    artifact("2.0.0")
    devices(2)
    rollout = phased()
    client = _admin(*OPERATOR_PERMS)

    _act(client, rollout, "pause", "checking the canaries")
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.PAUSED
    page = client.get(_page(rollout)).content.decode()
    assert "Resume</button>" in page
    assert "Pause</button>" not in page
    _act(client, rollout, "resume", "canaries fine")
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING
    done = _act(client, rollout, "abort", "  wrong   model\nfile ")
    assert Rollout.objects.get(pk=rollout.pk).status in {"aborted", "rolled_back"}
    print(re.findall(r"messagelist.*?</ul>", done.content.decode(), re.S))
    assert f"Rollout {rollout.public_id}: abort done." in done.content.decode()

    trail = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk")
    assert [(a.to_status, a.actor_name, a.reason) for a in trail][-3:] == [
        ("paused", "desk", "checking the canaries"),
        ("running", "desk", "canaries fine"),
        ("aborted", "desk", "wrong model file"),
    ]
    assert "wrong model file" in done.content.decode()  # the audit timeline on the page


def test_start_from_the_page_needs_start_permission():
    artifact("2.0.0")
    devices(1)
    rollout = phased(start=False)
    controller = _admin(*VIEWER_PERMS, "ota.control_rollout")
    assert "Start now</button>" not in controller.get(_page(rollout)).content.decode()
    assert _act(controller, rollout, "start").status_code == 403

    starter = _admin(*VIEWER_PERMS, "ota.start_rollout", name="starter")
    assert "Start now</button>" in starter.get(_page(rollout)).content.decode()
    _act(starter, rollout, "start", "window opened")
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING
    assert RolloutAuditEvent.objects.filter(rollout=rollout, reason="window opened").exists()


def test_promote_an_arm_with_a_reason():
    artifact("1.0.0")
    artifact("2.0.0")
    devices(4)
    rollout = ab(
        arms=[
            {"name": "a", "version": "1.0.0", "baseline": True},
            {"name": "b", "version": "2.0.0"},
        ]
    )
    client = _admin(*OPERATOR_PERMS)
    html = client.get(_page(rollout)).content.decode()
    assert "Promote arm</button>" in html
    assert '<option value="b">b</option>' in html

    _act(client, rollout, "promote", "b is faster", arm="b")

    fresh = Rollout.objects.get(pk=rollout.pk)
    assert (fresh.promoted_arm, fresh.version) == ("b", "2.0.0")
    assert RolloutAuditEvent.objects.filter(rollout=rollout, reason="b is faster").exists()


def test_without_control_permission_no_buttons_and_post_is_403():
    artifact("2.0.0")
    devices(1)
    rollout = phased()
    viewer = _admin(*VIEWER_PERMS)

    html = viewer.get(_page(rollout)).content.decode()
    assert "dash-action" not in html
    assert "<dialog" not in html
    for action in ("pause", "abort", "resume", "promote"):
        assert _act(viewer, rollout, action).status_code == 403
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING
    assert not RolloutAuditEvent.objects.filter(rollout=rollout, actor_name="desk").exists()


def test_a_reason_is_required():
    artifact("2.0.0")
    devices(1)
    rollout = phased()
    client = _admin(*OPERATOR_PERMS)
    before = RolloutAuditEvent.objects.filter(rollout=rollout).count()

    for reason in ("", "   \n\t"):
        page = _act(client, rollout, "abort", reason)
        assert "Give a reason" in page.content.decode()
    page = _act(client, rollout, "abort", "x" * 501)
    assert "longer than 500 characters" in page.content.decode()

    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING
    assert RolloutAuditEvent.objects.filter(rollout=rollout).count() == before


def test_a_refused_action_is_reported_not_raised():
    artifact("2.0.0")
    devices(1)
    rollout = phased()
    client = _admin(*OPERATOR_PERMS)

    page = _act(client, rollout, "resume")  # it is running, not paused

    assert "only a paused rollout can be resumed" in page.content.decode()
    assert [r.state for r in rows(rollout)] == ["pending"]


def test_odd_requests_are_refused_cleanly():
    artifact("2.0.0")
    devices(1)
    rollout = phased()
    client = _admin(*OPERATOR_PERMS)

    assert client.get(f"/admin/ota/rollout/{rollout.pk}/act/").status_code == 405
    assert _act(client, rollout, "delete").status_code == 400
    assert client.get("/admin/ota/rollout/999999/change/").status_code == 404
    assert client.get("/admin/ota/rollout/999999/progress/").status_code == 404
    anonymous = Client().post(f"/admin/ota/rollout/{rollout.pk}/act/", {"action": "abort"})
    assert anonymous.status_code == 302
    assert "/login/" in anonymous["Location"]
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_list_page_renders():
    artifact("2.0.0")
    devices(3)
    rollout = phased(stages=[{"percent": 50}, {"percent": 100}])
    client = _admin(*VIEWER_PERMS)
    listing = client.get("/admin/ota/rollout/")
    assert listing.status_code == 200
    assert rollout.public_id in listing.content.decode()
    assert client.get("/admin/ota/rolloutdevice/").status_code == 200


def test_progress_fragment_carries_the_actions_the_status_allows_now():
    artifact("2.0.0")
    devices(1)
    rollout = phased()
    client = _admin(*OPERATOR_PERMS)
    url = f"/admin/ota/rollout/{rollout.pk}/progress/"
    assert "Pause</button>" in client.get(url).content.decode()

    _act(client, rollout, "pause", "a look first")

    html = client.get(url).content.decode()
    assert "Pause</button>" not in html
    assert "Resume</button>" in html
    assert 'name="csrfmiddlewaretoken"' in html  # the dialog's form can be posted
    assert "dash-action" not in _admin(*VIEWER_PERMS, name="v").get(url).content.decode()
