"""Every identifier field of every endpoint (body, query string, URL path): generated
valid ids get past validation, anything outside the alphabet is a 400 with the kind's
stable code, and nothing is written."""

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identifier_strategies import invalid, valid

from device_agent.protocol import identifiers as ids
from device_agent.protocol.identifiers import IdentifierKind
from fleet.models import DesiredState, Device, DynamicGroup, EnrollmentToken, Group, Tag
from ota.models import Artifact, Model, Rollout, TufMetadata

PROPERTY = settings(
    max_examples=5,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HW = "linux-x86_64-fp32"
SELECTION = {"groups": ["canary"]}

Body = Callable[[str], dict[str, Any]]


def _selection(key: str) -> Body:
    return lambda v: {"model": "kws", "version": "1.0.0", "selection": {key: [v]}}


# (id, kind, method, path, body with the identifier in it)
BODY_FIELDS: list[tuple[str, IdentifierKind, str, str, Body]] = [
    ("group.name", ids.GROUP_NAME, "post", "/api/v1/groups/", lambda v: {"name": v}),
    ("dynamic.name", ids.GROUP_NAME, "post", "/api/v1/dynamic-groups/", lambda v: {"name": v}),
    (
        "dynamic.hardware",
        ids.HARDWARE,
        "post",
        "/api/v1/dynamic-groups/",
        lambda v: {"name": "d", "hardware": [v]},
    ),
    (
        "dynamic.tags",
        ids.TAG_NAME,
        "post",
        "/api/v1/dynamic-groups/",
        lambda v: {"name": "d", "tags": [v]},
    ),
    ("labels.tags", ids.TAG_NAME, "patch", "/api/v1/devices/dev-1/", lambda v: {"tags": [v]}),
    (
        "labels.groups",
        ids.GROUP_NAME,
        "patch",
        "/api/v1/devices/dev-1/",
        lambda v: {"groups": [v]},
    ),
    (
        "members.add",
        ids.DEVICE_ID,
        "post",
        "/api/v1/groups/canary/members",
        lambda v: {"add": [v]},
    ),
    (
        "members.remove",
        ids.DEVICE_ID,
        "post",
        "/api/v1/groups/canary/members",
        lambda v: {"remove": [v]},
    ),
    (
        "token.hardware",
        ids.HARDWARE,
        "post",
        "/api/v1/enrollment-tokens",
        lambda v: {"hardware": v or "\n"},  # "" is documented: any hardware
    ),
    (
        "token.group",
        ids.GROUP_NAME,
        "post",
        "/api/v1/enrollment-tokens",
        lambda v: {"group": v or "\n"},  # "" is documented: no group
    ),
    (
        "enroll.device_id",
        ids.DEVICE_ID,
        "post",
        "/api/v1/enroll",
        lambda v: {"token": "t", "device_id": v, "hardware": HW, "csr": "x"},
    ),
    (
        "enroll.hardware",
        ids.HARDWARE,
        "post",
        "/api/v1/enroll",
        lambda v: {"token": "t", "device_id": "dev-2", "hardware": v, "csr": "x"},
    ),
    (
        "desired.model",
        ids.MODEL_NAME,
        "post",
        "/api/v1/devices/dev-1/desired",
        lambda v: {"models": [{"model": v, "version": "1.0.0"}]},
    ),
    (
        "desired.version",
        ids.VERSION,
        "post",
        "/api/v1/devices/dev-1/desired",
        lambda v: {"models": [{"model": "kws", "version": v}]},
    ),
    (
        "rollout.model",
        ids.MODEL_NAME,
        "post",
        "/api/v1/rollouts/",
        lambda v: {"model": v, "version": "1.0.0", "selection": SELECTION},
    ),
    (
        "rollout.version",
        ids.VERSION,
        "post",
        "/api/v1/rollouts/",
        lambda v: {"model": "kws", "version": v or "\n", "selection": SELECTION},
    ),
    *[
        (
            f"rollout.selection.{key}",
            kind,
            "post",
            "/api/v1/rollouts/",
            _selection(key),
        )
        for key, kind in (
            ("groups", ids.GROUP_NAME),
            ("dynamic_groups", ids.GROUP_NAME),
            ("devices", ids.DEVICE_ID),
            ("tags", ids.TAG_NAME),
            ("hardware", ids.HARDWARE),
        )
    ],
    (
        "rollout.arms.name",
        ids.ARM_NAME,
        "post",
        "/api/v1/rollouts/",
        lambda v: {
            "model": "kws",
            "strategy": "ab",
            "arms": [
                {"name": v, "version": "1.0.0", "baseline": True},
                {"name": "B", "version": "1.0.0"},
            ],
            "selection": SELECTION,
        },
    ),
    (
        "rollout.arms.version",
        ids.VERSION,
        "post",
        "/api/v1/rollouts/",
        lambda v: {
            "model": "kws",
            "strategy": "ab",
            "arms": [
                {"name": "A", "version": v, "baseline": True},
                {"name": "B", "version": "1.0.0"},
            ],
            "selection": SELECTION,
        },
    ),
    ("promote.arm", ids.ARM_NAME, "post", "/api/v1/rollouts/r-1/promote", lambda v: {"arm": v}),
]

QUERY_FIELDS: list[tuple[str, IdentifierKind, str, str]] = [
    ("devices?hardware", ids.HARDWARE, "/api/v1/devices/", "hardware"),
    ("devices?tag", ids.TAG_NAME, "/api/v1/devices/", "tag"),
    ("devices?group", ids.GROUP_NAME, "/api/v1/devices/", "group"),
    ("devices?q", ids.DEVICE_ID, "/api/v1/devices/", "q"),
    ("rollouts?model", ids.MODEL_NAME, "/api/v1/rollouts/", "model"),
]

PATH_FIELDS: list[tuple[str, IdentifierKind, str, str]] = [
    ("model", ids.MODEL_NAME, "get", "/api/v1/models/{}/"),
    ("model.metadata", ids.MODEL_NAME, "get", "/api/v1/models/{}/metadata"),
    ("model.publish", ids.MODEL_NAME, "post", "/api/v1/models/{}/publish"),
    ("model.versions", ids.MODEL_NAME, "get", "/api/v1/models/{}/versions/"),
    ("version", ids.VERSION, "get", "/api/v1/models/kws/versions/{}/"),
    ("release-key", ids.RELEASE_KEY_ID, "post", "/api/v1/release-keys/{}/revoke"),
    ("device", ids.DEVICE_ID, "get", "/api/v1/devices/{}/"),
    ("device.patch", ids.DEVICE_ID, "patch", "/api/v1/devices/{}/"),
    ("device.revoke", ids.DEVICE_ID, "post", "/api/v1/devices/{}/revoke"),
    ("device.desired", ids.DEVICE_ID, "post", "/api/v1/devices/{}/desired"),
    ("device.republish", ids.DEVICE_ID, "post", "/api/v1/devices/{}/desired/republish"),
    ("group", ids.GROUP_NAME, "get", "/api/v1/groups/{}/"),
    ("group.delete", ids.GROUP_NAME, "delete", "/api/v1/groups/{}/"),
    ("group.members", ids.GROUP_NAME, "post", "/api/v1/groups/{}/members"),
    ("dynamic-group", ids.GROUP_NAME, "delete", "/api/v1/dynamic-groups/{}/"),
    ("dynamic-group.devices", ids.GROUP_NAME, "get", "/api/v1/dynamic-groups/{}/devices"),
    ("rollout", ids.ROLLOUT_ID, "get", "/api/v1/rollouts/{}/"),
    *[
        (f"rollout.{action}", ids.ROLLOUT_ID, "post", f"/api/v1/rollouts/{{}}/{action}")
        for action in ("start", "pause", "resume", "abort", "promote", "schedule", "unschedule")
    ],
    ("rollout.devices", ids.ROLLOUT_ID, "get", "/api/v1/rollouts/{}/devices"),
    ("rollout.audit", ids.ROLLOUT_ID, "get", "/api/v1/rollouts/{}/audit"),
    ("telemetry.device", ids.DEVICE_ID, "get", "/api/v1/telemetry/devices/{}/samples"),
    (
        "telemetry.rollups",
        ids.REPORTED_ROLLOUT_ID,
        "get",
        "/api/v1/telemetry/rollouts/{}/rollups?metric=m",
    ),
    (
        "telemetry.summary",
        ids.REPORTED_ROLLOUT_ID,
        "get",
        "/api/v1/telemetry/rollouts/{}/summary?metric=m",
    ),
]


@pytest.fixture
def staff(db, storage_dirs):
    """A superuser; model kws (no TUF repository: not needed here), dev-1, group canary."""
    Model.objects.create(name="kws")
    Device.objects.create(device_id="dev-1", hardware=HW)
    Group.objects.create(name="canary")
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw-long-123456"))
    return client


def _written() -> tuple[int, ...]:
    return (
        Group.objects.count(),
        DynamicGroup.objects.count(),
        Tag.objects.count(),
        Device.objects.count(),
        Device.tags.through.objects.count(),
        Device.groups.through.objects.count(),
        EnrollmentToken.objects.count(),
        DesiredState.objects.count(),
        Rollout.objects.count(),
        Model.objects.count(),
        Artifact.objects.count(),
        TufMetadata.objects.count(),
    )


def _send(client: Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    cache.clear()  # the enroll throttle counts requests
    if body is None:
        return getattr(client, method)(path)
    return getattr(client, method)(path, body, content_type="application/json")


def _refused(response: Any, kind: IdentifierKind) -> None:
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == str(kind.code)


@pytest.mark.parametrize(
    ("kind", "method", "path", "body"),
    [pytest.param(*case[1:], id=case[0]) for case in BODY_FIELDS],
)
@PROPERTY
@given(data=st.data())
def test_body_identifiers(staff, kind, method, path, body, data):
    before = _written()
    value = data.draw(invalid(kind))
    _refused(_send(staff, method, path, body(value)), kind)
    assert _written() == before, "a refused request wrote something"


@pytest.mark.parametrize(
    ("kind", "method", "path", "body"),
    [pytest.param(*case[1:], id=case[0]) for case in BODY_FIELDS],
)
@PROPERTY
@given(data=st.data())
def test_valid_body_identifiers_pass_validation(staff, kind, method, path, body, data):
    value = data.draw(valid(kind))
    response = _send(staff, method, path, body(value))
    assert response.status_code < 500, response.content
    if response.status_code >= 400:
        # refused for another reason (no such group, bad CSR...), never the identifier
        assert response.json()["error"]["code"] not in ("invalid_identifier", "invalid_version")
    Group.objects.exclude(name="canary").delete()
    DynamicGroup.objects.all().delete()
    EnrollmentToken.objects.all().delete()


@pytest.mark.parametrize(
    ("kind", "path", "param"), [pytest.param(*case[1:], id=case[0]) for case in QUERY_FIELDS]
)
@PROPERTY
@given(data=st.data())
def test_query_identifiers(staff, kind, path, param, data):
    value = data.draw(invalid(kind).filter(bool))  # an empty filter means no filter
    _refused(_send(staff, "get", f"{path}?{urlencode({param: value})}"), kind)
    ok = _send(staff, "get", f"{path}?{urlencode({param: data.draw(valid(kind))})}")
    assert ok.status_code == 200, ok.content


@pytest.mark.parametrize(
    ("kind", "method", "path"), [pytest.param(*case[1:], id=case[0]) for case in PATH_FIELDS]
)
@PROPERTY
@given(data=st.data())
def test_path_identifiers(staff, kind, method, path, data):
    before = _written()
    value = data.draw(invalid(kind))
    response = _send(staff, method, path.format(quote(value, safe="")), {})
    if value and "/" not in value:
        _refused(response, kind)
    else:  # no longer one path segment: no such path
        assert response.status_code == 404, response.content
        assert response.json()["error"]["code"] == "not_found"
    assert _written() == before
    good = _send(staff, method, path.format(quote(data.draw(valid(kind)), safe="")), {})
    assert good.status_code < 500, good.content
    if good.status_code >= 400:
        assert good.json()["error"]["code"] not in ("invalid_identifier", "invalid_version")
