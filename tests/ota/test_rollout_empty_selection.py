"""A rollout whose selection matches no device is refused (``empty_selection``, HTTP 400)
when it is created, scheduled or started, naming the selection, and leaves nothing behind:
it would otherwise notify nobody and end ``completed`` as if it had done its work."""

import json
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rollout_helpers import HW, HW2, artifact, devices, operator, phased, use_own_director_key

from fleet.auth import ALL_MODELS, SCOPE_ROLLOUTS_CREATE, SCOPE_ROLLOUTS_OPERATE
from fleet.models import Device
from fleet.services import api_token_create
from ota import rollouts
from ota.models import Rollout, RolloutAuditEvent, RolloutStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fleet(settings, tmp_path):
    use_own_director_key(settings, tmp_path)
    artifact("2.0.0")
    devices(3)


def _post(path: str, body: dict[str, Any]) -> Any:
    token = api_token_create(
        user=operator(),
        name="ops",
        scopes=[SCOPE_ROLLOUTS_CREATE, SCOPE_ROLLOUTS_OPERATE],
        model_names=[ALL_MODELS],
    )[1]
    return Client().post(
        f"/api/v1/{path}",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.mark.parametrize(
    ("selection", "named"),
    [
        ({"devices": ["no-such-device"]}, "devices no-such-device"),
        ({"hardware": [HW2]}, f"hardware {HW2}"),
        ({"all": True, "tags": ["nobody-has-this"]}, "tags nobody-has-this"),
    ],
)
def test_the_api_refuses_a_selection_that_matches_no_device(selection, named):
    # when an operator creates (and asks to start) a rollout of a selection nobody matches
    response = _post(
        "rollouts/",
        {
            "model": "kws",
            "strategy": "phased",
            "version": "2.0.0",
            "selection": selection,
            "start": True,
        },
    )

    # then it is refused with a stable code and a detail naming the selection
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "empty_selection"
    assert named in error["detail"]
    # and nothing was written
    assert not Rollout.objects.exists()
    assert not RolloutAuditEvent.objects.exists()


def test_a_draft_whose_devices_went_away_is_refused_at_schedule_and_start():
    # given a draft of the fleet's only hardware, whose devices are then revoked
    draft = phased(selection={"hardware": [HW]}, start=False)
    Device.objects.update(revoked_at=timezone.now())

    # when it is scheduled, or started, it is refused and stays a draft
    for act in (rollouts.rollout_schedule, rollouts.rollout_start):
        with pytest.raises(rollouts.ServiceError) as refused:
            act(rollout=draft, by=operator())
        assert refused.value.code == "empty_selection"
        assert f"hardware {HW}" in refused.value.detail
    draft.refresh_from_db()
    assert draft.status == RolloutStatus.DRAFT
    assert not draft.devices.exists()


def test_a_scheduled_rollout_whose_devices_went_away_does_not_start():
    # given a scheduled rollout whose devices are revoked before it starts
    scheduled = phased(start=False)
    scheduled = rollouts.rollout_schedule(rollout=scheduled, by=operator())
    Device.objects.update(revoked_at=timezone.now())

    # when an operator starts it, it is refused and stays scheduled (no rows, no completion)
    with pytest.raises(rollouts.ServiceError) as refused:
        rollouts.rollout_start(rollout=scheduled, by=operator())
    assert refused.value.code == "empty_selection"
    scheduled.refresh_from_db()
    assert scheduled.status == RolloutStatus.SCHEDULED
    assert not scheduled.devices.exists()
