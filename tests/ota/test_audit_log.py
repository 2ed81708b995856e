"""The fleet-wide audit log: publishes, key changes, revocations and token changes each
write an audit row where they happen; the admin's audit log lists them with the rollouts'
trail, filtered by who, what, when and reason, in a number of queries that does not grow."""

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from publishing_helpers import post_publish, signed_metadata
from rollout_helpers import artifact, devices, phased, use_own_director_key, user

from fleet.audit import audit_record
from fleet.auth import SCOPE_FLEET_READ
from fleet.enrollment import enrollment_token_create
from fleet.models import ApiToken, AuditEvent
from fleet.services import api_token_create
from ota import rollouts
from ota.models import ReleaseKey, RolloutAuditEvent

pytestmark = pytest.mark.django_db
AUDIT = "/admin/audit/"
DATA = b"\x1c\x00\x00\x00TFL3" + b"model bytes" * 100


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _admin() -> tuple[Client, User]:
    account = user("boss", staff=True)
    account.is_superuser = True
    account.save()
    client = Client()
    client.force_login(account)
    return client, account


def _rows(page: str) -> list[str]:
    return [line for line in page.split("<tr data-action=")[1:]]


def test_each_action_writes_its_audit_row(kws, release_key, ci_token, tmp_path):
    client, boss = _admin()
    md = signed_metadata(None, release_key.signer, DATA)
    assert post_publish(Client(), ci_token, md, DATA, tmp_path).status_code == 201
    (device,) = devices(1)
    revoked = client.post(
        f"/api/v1/devices/{device.device_id}/revoke",
        json.dumps({"reason": "stolen from the depot"}),
        content_type="application/json",
    )
    assert revoked.status_code == 200, revoked.content
    keyid = ReleaseKey.objects.get().keyid
    key = client.post(
        f"/api/v1/release-keys/{keyid}/revoke",
        json.dumps({"reason": "laptop lost"}),
        content_type="application/json",
    )
    assert key.status_code == 200, key.content
    token, _ = api_token_create(user=boss, name="grafana", scopes=[SCOPE_FLEET_READ], by=boss)
    enrollment_token_create(by=boss, hardware="esp32s3-int8")
    change = client.get(f"/admin/fleet/apitoken/{token.pk}/change/")
    assert change.status_code == 200
    form = {
        "name": "grafana",
        "expires_at_0": "",
        "expires_at_1": "",
        "revoked_at_0": timezone.now().strftime("%Y-%m-%d"),
        "revoked_at_1": "12:00:00",
    }
    assert client.post(f"/admin/fleet/apitoken/{token.pk}/change/", form).status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None

    got = list(AuditEvent.objects.order_by("pk").values_list("actor_name", "action", "reason"))
    assert got == [
        ("manage.py", "model.register", ""),  # the kws fixture
        ("manage.py", "api_token.create", ""),  # the ci fixture's token
        ("ci", "publish", ""),
        ("boss", "device.revoke", "stolen from the depot"),
        ("boss", "release_key.revoke", "laptop lost"),
        ("boss", "api_token.create", ""),
        ("boss", "enrollment_token.create", ""),
        ("boss", "api_token.revoke", ""),
    ]
    publish = AuditEvent.objects.get(action="publish")
    assert publish.target == "kws 1.0.0 (linux-x86_64-fp32)"
    assert AuditEvent.objects.get(action="release_key.revoke").target == f"kws key {keyid}"
    assert AuditEvent.objects.get(action="model.register").target == (
        f"kws, threshold 1, key(s) {keyid}"
    )

    page = client.get(AUDIT).content.decode()
    assert "revoked a device: device dev-00000" in page
    assert "stolen from the depot" in page
    assert "published an artifact: kws 1.0.0 (linux-x86_64-fp32)" in page
    assert f"registered a model: kws, threshold 1, key(s) {keyid}" in page
    assert "revoked an API token: API token grafana" in page


def _fill() -> None:
    artifact("2.0.0")
    devices(3)
    by = user(
        "alice", "ota.view_rollout", "ota.add_rollout", "ota.start_rollout", "ota.control_rollout"
    )
    rollout = phased(by=by)
    rollouts.rollout_abort(rollout=rollout, by=by, reason="the new model mishears wake words")
    audit_record(action="device.revoke", target="device dev-00001", reason="stolen")
    audit_record(action="publish", target="kws 2.0.0 (linux-x86_64-fp32)", by=by)


def test_filters_by_who_what_when_and_reason():
    _fill()
    client, _ = _admin()

    everything = client.get(AUDIT).content.decode()
    total = RolloutAuditEvent.objects.count() + AuditEvent.objects.count()
    assert len(_rows(everything)) == total
    rollout = RolloutAuditEvent.objects.get(to_status="aborted").rollout
    assert f"moved rollout {rollout.public_id} from running to aborted" in everything

    reason = client.get(AUDIT, {"reason": "MISHEARS"}).content.decode()
    assert len(_rows(reason)) == 1
    assert "the new model mishears wake words" in reason

    who = client.get(AUDIT, {"who": "manage"}).content.decode()
    assert len(_rows(who)) == 1
    assert "device dev-00001" in who

    what = client.get(AUDIT, {"what": "rollout"}).content.decode()
    assert len(_rows(what)) == RolloutAuditEvent.objects.count()
    publish = client.get(AUDIT, {"what": "publish"}).content.decode()
    assert len(_rows(publish)) == 1

    today = timezone.localdate()
    assert len(_rows(client.get(AUDIT, {"since": today.isoformat()}).content.decode())) == total
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert "Nothing matches" in client.get(AUDIT, {"since": tomorrow}).content.decode()
    assert len(_rows(client.get(AUDIT, {"until": today.isoformat()}).content.decode())) == total

    bad = client.get(AUDIT, {"since": "yesterday", "what": "drop table"})
    assert bad.status_code == 200
    assert "since must be a date" in bad.content.decode()
    assert "unknown action" in bad.content.decode()


def test_rollout_readers_see_only_the_rollouts_trail():
    _fill()
    reader = Client()
    reader.force_login(user("reader", "ota.view_rollout", staff=True))
    page = reader.get(AUDIT).content.decode()
    assert len(_rows(page)) == RolloutAuditEvent.objects.count()
    assert "device dev-00001" not in page

    nobody = Client()
    nobody.force_login(user("nobody", staff=True))
    assert nobody.get(AUDIT).status_code == 403


def _count(client: Client, params: dict[str, str] | None = None) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(AUDIT, params or {}).status_code == 200
    return len(captured.captured_queries)


def test_the_log_costs_the_same_whatever_its_length():
    _fill()
    client, _ = _admin()
    before = (_count(client), _count(client, {"who": "alice", "page": "1"}))
    for i in range(120):
        audit_record(action="publish", target=f"kws 3.{i}.0 (hw)", reason=f"r{i}")
    after = (_count(client), _count(client, {"who": "alice", "page": "1"}))
    assert after == before
    assert max(after) <= 8
    page3 = client.get(AUDIT, {"page": "3"}).content.decode()
    assert len(_rows(page3)) == RolloutAuditEvent.objects.count() + AuditEvent.objects.count() - 100
