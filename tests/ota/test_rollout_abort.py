"""Abort rolls the fleet back: every touched device gets its previous version re-issued
through the director, and the rollout is rolled_back once they all reported it."""

from datetime import timedelta

import pytest
from rollout_helpers import (
    artifact,
    desired_entry,
    desired_seq,
    devices,
    evaluate,
    fresh,
    later,
    operator,
    phased,
    report,
    report_state,
    rows,
    states,
    use_own_director_key,
)

from device_agent.protocol.messages import Phase
from fleet.director import ModelAssignment, device_desired_set
from ota import rollouts
from ota.models import RolloutAuditEvent, RolloutStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _on(devices_, artifact_):
    """The devices run ``artifact_`` as the director last told them (and report so)."""
    for device in devices_:
        device_desired_set(
            device=device, assignments=[ModelAssignment(artifact=artifact_, rollout_id="r-0")]
        )
        report_state(device, artifact_.version, artifact_.release_counter)


def test_abort_reissues_previous_versions_and_ends_rolled_back():
    # given 8 devices on 1.0.0, and a rollout of 2.0.0 to half of them at first
    old = artifact("1.0.0", counter=10)
    artifact("2.0.0", counter=20)
    fleet = devices(8)
    _on(fleet, old)
    rollout = phased(stages=[{"percent": 50}, {"percent": 100}])
    evaluate(rollout)
    touched = rows(rollout, state="notified")
    assert touched
    untouched = rows(rollout, state="pending")
    untouched_seqs = {r.device_id: desired_seq(r.device) for r in untouched}
    # one committed 2.0.0, one failed (its agent rolled itself back), the rest in flight
    committed, failed, *in_flight = (r.device for r in touched)
    report(committed, rollout, Phase.COMMITTED)
    report_state(committed, "2.0.0", 20)
    report(failed, rollout, Phase.FAILED)
    evaluate(rollout)

    # when an operator aborts and the engine evaluates
    rollouts.rollout_abort(rollout=rollout, by=operator(), reason="crashes in the field")
    result = evaluate(rollout)

    # then every touched device's desired entry is 1.0.0 again, tagged with this rollout
    assert result.rollback_issued == len(touched)
    # (and the envelopes issued are counted: the notifications and the roll-backs)
    assert fresh(rollout).issued_count == 2 * len(touched)
    for row in touched:
        entry = desired_entry(row.device)
        assert entry is not None
        assert (entry["version"], entry["path"]) == ("1.0.0", old.target_path)
        assert (entry["rollout_id"], entry["arm"]) == (rollout.public_id, None)
    # and the untouched ones were not re-signed
    for row in untouched:
        assert desired_seq(row.device) == untouched_seqs[row.device_id]
    assert fresh(rollout).status == RolloutStatus.ABORTED

    # when the devices report: the committed and in-flight ones install 1.0.0 again and say
    # so in events; the failed one already runs 1.0.0 and only reports its state
    report(committed, rollout, Phase.COMMITTED)
    for device in in_flight:
        report(device, rollout, Phase.COMMITTED)
    assert evaluate(rollout).status == RolloutStatus.ABORTED  # one still to report
    report_state(failed, "1.0.0", 10)
    final = evaluate(rollout)

    # then the rollout is rolled back, with the figures in its audit trail
    assert final.status == RolloutStatus.ROLLED_BACK
    assert {states(rollout)[r.device.device_id] for r in touched} == {"rolled_back"}
    last = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk").last()
    assert last is not None
    assert (last.from_status, last.to_status, last.actor_name) == (
        "aborted",
        "rolled_back",
        "engine",
    )
    assert last.figures == {"rolled_back": len(touched), "kept": 0, "rollback_failed": 0}


def test_policy_abort_on_breach_rolls_back_in_the_same_evaluation():
    old = artifact("1.0.0", counter=10)
    artifact("2.0.0", counter=20)
    fleet = devices(4)
    _on(fleet, old)
    rollout = phased(policy={"on_breach": "abort", "min_finished": 2, "max_failure_rate": 0.4})
    evaluate(rollout)
    for device in fleet[:2]:
        report(device, rollout, Phase.FAILED)

    result = evaluate(rollout)

    assert result.status == RolloutStatus.ABORTED
    assert result.rollback_issued == 4
    assert {(desired_entry(d) or {}).get("version") for d in fleet} == {"1.0.0"}
    aborted = RolloutAuditEvent.objects.get(rollout=rollout, to_status="aborted")
    assert aborted.actor_name == "engine"
    assert aborted.figures["gates"][0]["gate"] == "install_failure_rate"


def test_devices_without_a_previous_version_or_below_its_floor_keep_theirs():
    # a device that never had kws, and one that committed 2.0.0 whose floor forbids 1.0.0
    old = artifact("1.0.0", counter=10)
    artifact("2.0.0", counter=20, floor=20)
    fresh_device, secured = devices(2)
    _on([secured], old)
    rollout = phased()
    evaluate(rollout)
    report(secured, rollout, Phase.COMMITTED)
    evaluate(rollout)

    rollouts.rollout_abort(rollout=rollout, by=operator(), reason="stop")
    result = evaluate(rollout)

    assert result.rollback_issued == 0
    assert result.status == RolloutStatus.ROLLED_BACK
    by_id = {r.device.device_id: r for r in rows(rollout)}
    assert (by_id[fresh_device.device_id].state, by_id[fresh_device.device_id].last_code) == (
        "kept",
        "no_previous_version",
    )
    assert (by_id[secured.device_id].state, by_id[secured.device_id].last_code) == (
        "kept",
        "downgrade_refused",
    )
    entry = desired_entry(secured)
    assert entry is not None
    assert entry["version"] == "2.0.0"


def test_a_failing_rollback_is_retried_then_given_up():
    old = artifact("1.0.0", counter=10)
    artifact("2.0.0", counter=20)
    (device,) = devices(1)
    _on([device], old)
    rollout = phased(policy={"retries": 1})
    evaluate(rollout)
    report(device, rollout, Phase.COMMITTED)
    rollouts.rollout_abort(rollout=rollout, by=operator(), reason="stop")
    evaluate(rollout)
    first_seq = desired_seq(device)

    # the roll-back download fails: re-issued once (retries=1) ...
    report(device, rollout, Phase.FAILED)
    assert evaluate(rollout).rollback_issued == 1
    assert desired_seq(device) == first_seq + 1
    # ... and when that fails too, given up; the rollout finishes and says so
    report(device, rollout, Phase.FAILED)
    result = evaluate(rollout)
    assert result.status == RolloutStatus.ROLLED_BACK
    assert states(rollout) == {device.device_id: "rollback_failed"}
    last = RolloutAuditEvent.objects.filter(rollout=rollout).order_by("pk").last()
    assert last is not None
    assert "1 failed to roll back" in last.reason


def test_a_silent_device_times_out_of_its_rollback():
    old = artifact("1.0.0", counter=10)
    artifact("2.0.0", counter=20)
    (device,) = devices(1)
    _on([device], old)
    rollout = phased(policy={"device_timeout_minutes": 5})
    t0 = later()
    evaluate(rollout, t0)
    rollouts.rollout_abort(rollout=rollout, by=operator(), reason="stop")
    evaluate(rollout, t0 + timedelta(minutes=1))
    assert states(rollout) == {device.device_id: "rolling_back"}

    result = evaluate(rollout, t0 + timedelta(minutes=7))

    assert result.status == RolloutStatus.ROLLED_BACK
    assert states(rollout) == {device.device_id: "rollback_failed"}
