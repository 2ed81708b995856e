"""Two rollouts of one model may not target the same device: the second is refused with
`conflict` naming the first, when it is scheduled and again when it starts."""

import pytest
from rollout_helpers import (
    HW,
    HW2,
    artifact,
    devices,
    evaluate,
    later,
    operator,
    phased,
    use_own_director_key,
)

from device_agent.protocol.errors import ErrorCode
from fleet.errors import ServiceError
from fleet.models import Group
from ota import rollouts
from ota.models import RolloutStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _grouped(name: str, members):
    group = Group.objects.create(name=name)
    group.devices.add(*members)
    return group


def test_overlapping_rollout_of_the_same_model_is_refused():
    artifact("2.0.0")
    artifact("2.1.0")
    fleet = devices(10)
    _grouped("berlin", fleet[:6])
    _grouped("paris", fleet[4:])
    first = phased(selection={"groups": ["berlin"]})

    second = phased(version="2.1.0", selection={"groups": ["paris"]}, start=False)
    with pytest.raises(ServiceError) as refused:
        rollouts.rollout_schedule(rollout=second, by=operator())

    assert refused.value.code == ErrorCode.CONFLICT
    detail = refused.value.detail
    assert f"rollout {first.public_id} (running) of kws already targets 2 of the selected" in detail
    assert "dev-00004, dev-00005" in detail
    second.refresh_from_db()
    assert second.status == RolloutStatus.DRAFT


def test_a_scheduled_rollout_holds_its_devices_too():
    artifact("2.0.0")
    devices(3)
    first = phased(start=False)
    rollouts.rollout_schedule(rollout=first, by=operator())

    second = phased(start=False)
    with pytest.raises(ServiceError) as refused:
        rollouts.rollout_start(rollout=second, by=operator())
    assert "(scheduled)" in refused.value.detail


def test_disjoint_selections_and_other_models_are_fine():
    artifact("2.0.0")
    artifact("1.0.0", name="detector")
    devices(4, hardware=HW)
    devices(4, hardware=HW2, prefix="esp")
    artifact("2.0.0", HW2)
    phased(selection={"hardware": [HW]})

    other_hw = phased(selection={"hardware": [HW2]})
    other_model = phased(name="detector", version="1.0.0", selection={"all": True})

    assert other_hw.status == other_model.status == RolloutStatus.RUNNING


def test_devices_are_free_again_once_rolled_back_or_completed():
    artifact("2.0.0")
    devices(2)
    first = phased()
    rollouts.rollout_abort(rollout=first, by=operator(), reason="wrong build")
    assert evaluate(first).status == RolloutStatus.ROLLED_BACK  # nothing was touched yet

    second = phased()
    assert second.status == RolloutStatus.RUNNING


def test_an_aborted_rollout_holds_its_devices_until_rolled_back():
    artifact("2.0.0")
    devices(2)
    first = phased()
    evaluate(first)  # notifies both
    rollouts.rollout_abort(rollout=first, by=operator(), reason="bad")

    with pytest.raises(ServiceError) as refused:
        phased()
    assert "(aborted)" in refused.value.detail


def test_devices_skipped_by_a_rollout_are_not_held():
    # the first rollout has no variant for the esp32s: it skips them and does not hold them
    artifact("2.0.0", HW)
    artifact("2.1.0", HW2)
    devices(2, hardware=HW)
    devices(2, hardware=HW2, prefix="esp")
    phased(version="2.0.0")

    second = phased(version="2.1.0", selection={"hardware": [HW2]})
    assert second.status == RolloutStatus.RUNNING


def test_a_scheduled_start_that_now_overlaps_waits_and_says_why():
    # given a rollout scheduled for group "a", and another running on group "b"
    artifact("2.0.0")
    artifact("2.1.0")
    first, second = devices(2)
    group_a = _grouped("a", [first])
    _grouped("b", [second])
    scheduled = phased(selection={"groups": ["a"]}, start=False)
    rollouts.rollout_schedule(rollout=scheduled, by=operator(), starts_at=later())
    phased(version="2.1.0", selection={"groups": ["b"]})

    # when a device of "b" joins "a" before the start time
    group_a.devices.add(second)
    result = evaluate(scheduled, later(minutes=1))

    # then the start is refused by the engine; it stays scheduled with the reason
    assert result.status == RolloutStatus.SCHEDULED
    assert result.note.startswith("cannot start: rollout r-")
    assert "already targets 1 of the selected devices (dev-00001)" in result.note
