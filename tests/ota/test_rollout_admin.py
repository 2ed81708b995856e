"""Operators watch rollouts in the admin and pause, resume, abort or start them there;
each action goes through ota/rollouts.py (audited) and needs its permission."""

import pytest
from django.test import Client
from rollout_helpers import artifact, devices, evaluate, phased, rows, use_own_director_key, user

from ota.models import Rollout, RolloutAuditEvent, RolloutStatus

pytestmark = pytest.mark.django_db
OPERATOR_PERMS = ("ota.view_rollout", "ota.view_rolloutdevice", "ota.control_rollout")


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):  # type: ignore[no-untyped-def]
    use_own_director_key(settings, tmp_path)


def _admin(*perms: str) -> Client:
    client = Client()
    client.force_login(user("desk", *perms, staff=True))
    return client


def _action(client: Client, action: str, rollout: Rollout):  # type: ignore[no-untyped-def]
    return client.post(
        "/admin/ota/rollout/",
        {"action": action, "_selected_action": [rollout.pk]},
        follow=True,
    )


def test_pages_render_with_progress():  # type: ignore[no-untyped-def]
    artifact("2.0.0")
    devices(3)
    rollout = phased(stages=[{"percent": 50}, {"percent": 100}])
    evaluate(rollout)
    client = _admin(*OPERATOR_PERMS)

    listing = client.get("/admin/ota/rollout/")
    assert listing.status_code == 200
    assert rollout.public_id in listing.content.decode()
    detail = client.get(f"/admin/ota/rollout/{rollout.pk}/change/")
    assert detail.status_code == 200
    assert "started" in detail.content.decode()  # the audit inline
    assert client.get("/admin/ota/rolloutdevice/").status_code == 200


def test_operator_pauses_resumes_and_aborts_from_the_admin():  # type: ignore[no-untyped-def]
    artifact("2.0.0")
    devices(2)
    rollout = phased()
    client = _admin(*OPERATOR_PERMS)

    _action(client, "pause", rollout)
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.PAUSED
    _action(client, "resume", rollout)
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING
    page = _action(client, "abort", rollout)
    assert Rollout.objects.get(pk=rollout.pk).status in {"aborted", "rolled_back"}
    assert "Aborted: 1 rollout(s)." in page.content.decode()

    trail = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk")
    assert [(a.to_status, a.actor_name) for a in trail][-3:] == [
        ("paused", "desk"),
        ("running", "desk"),
        ("aborted", "desk"),
    ]
    assert trail.last().reason == "aborted from the admin by desk"  # type: ignore[union-attr]


def test_admin_actions_need_their_permission():  # type: ignore[no-untyped-def]
    artifact("2.0.0")
    devices(1)
    rollout = phased()
    viewer = _admin("ota.view_rollout")

    page = _action(viewer, "abort", rollout)

    assert "needs the ota.control_rollout permission" in page.content.decode()
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_a_refused_action_is_reported_not_raised():  # type: ignore[no-untyped-def]
    artifact("2.0.0")
    devices(1)
    rollout = phased()
    client = _admin(*OPERATOR_PERMS)

    page = _action(client, "resume", rollout)  # it is running, not paused

    assert "only a paused rollout can be resumed" in page.content.decode()
    assert [r.state for r in rows(rollout)] == ["pending"]
