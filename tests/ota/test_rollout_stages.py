"""Phased rollouts: stages expose buckets below their percent, open only once the previous
stage finished and baked, and the rollout completes after the last."""

import pytest
from rollout_helpers import (
    HW,
    artifact,
    commit_all,
    desired_entry,
    devices,
    evaluate,
    fresh,
    later,
    phased,
    rows,
    use_own_director_key,
)

from device_agent.protocol.messages import Phase
from ota import engine
from ota.models import RolloutAuditEvent, RolloutStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def test_stages_open_after_their_devices_finished_and_baked():
    # given 200 devices on 1.0.0 and a 10 -> 50 -> 100 rollout of 2.0.0 with 30 min bakes
    artifact("1.0.0")
    target = artifact("2.0.0")
    fleet = devices(200)
    rollout = phased(
        stages=[
            {"percent": 10, "bake_minutes": 30},
            {"percent": 50, "bake_minutes": 30},
            {"percent": 100},
        ],
        policy={"rate_per_minute": 1000},
    )
    t0 = later()

    # when the first evaluation runs
    first = evaluate(rollout, t0)

    # then exactly the 10 % of devices with the lowest buckets are notified, with the
    # target entry
    notified = rows(rollout, state="notified")
    bounds = fresh(rollout).stage_bounds
    assert first.notified == len(notified) == 20
    assert all(r.bucket <= bounds[0] for r in notified)
    assert not [r for r in rows(rollout, state="pending") if r.bucket <= bounds[0]]
    entry = desired_entry(notified[0].device)
    assert entry is not None
    assert (entry["version"], entry["rollout_id"], entry["arm"]) == (
        "2.0.0",
        rollout.public_id,
        None,
    )
    assert entry["path"] == target.target_path

    # when they all commit, the stage is settled but bakes: nothing new for 30 minutes
    commit_all(rollout)
    evaluate(rollout, later(1, base=t0))
    assert fresh(rollout).current_stage == 0
    assert evaluate(rollout, later(30, base=t0)).notified == 0
    assert fresh(rollout).current_stage == 0

    # then after the bake the next stage opens and takes the next 40 % in bucket order
    advanced = evaluate(rollout, later(32, base=t0))
    assert fresh(rollout).current_stage == 1
    assert advanced.notified == 80
    assert all(r.bucket <= bounds[1] for r in rows(rollout, state="notified"))

    # and the earlier devices are never notified again (sticky, seq unchanged)
    first_ids = {r.device_id for r in notified}
    assert all(r.attempts == 1 for r in rows(rollout) if r.device_id in first_ids)

    # when everything commits through the last stage, the rollout completes
    t = later(32, base=t0)
    for _ in range(3):
        commit_all(rollout)
        t = later(31, base=t)
        evaluate(rollout, t)
        evaluate(rollout, later(31, base=t))
    done = fresh(rollout)
    assert done.status == RolloutStatus.COMPLETED
    assert {r.state for r in rows(rollout)} == {"succeeded"}
    assert len(rows(rollout)) == len(fleet) == 200
    audit = list(RolloutAuditEvent.objects.filter(rollout=rollout).values_list("reason", flat=True))
    assert "stage 2 (50 %) opened" in audit
    assert "stage 3 (100 %) opened" in audit
    assert audit[-1] == "every stage finished"
    assert HW  # all on one hardware here


def test_progress_events_do_not_finish_a_device():
    artifact("2.0.0")
    (device,) = devices(1)
    rollout = phased()
    evaluate(rollout)
    from rollout_helpers import report

    # when the device reports progress phases only
    for phase in (Phase.ACCEPTED, Phase.DOWNLOADING, Phase.VERIFIED, Phase.TRIAL):
        report(device, rollout, phase)
    evaluate(rollout)

    # then it is in progress with its last phase, and the rollout is still running
    (row,) = rows(rollout)
    assert (row.state, row.last_phase) == ("in_progress", "trial")
    assert fresh(rollout).status == RolloutStatus.RUNNING


def test_a_stage_opens_with_a_small_batch_and_the_rest_follows_at_once():
    # given 400 devices and one unpaced stage of 100 %
    artifact("1.0.0")
    artifact("2.0.0")
    devices(400)
    rollout = phased(policy={"rate_per_minute": 100_000})
    t0 = later()
    # when the stage's first evaluation runs, it notifies a small batch only, whose
    # envelopes go out as it commits, and asks for the next evaluation at once
    first = evaluate(rollout, t0)
    assert (first.notified, first.more) == (engine.NOTIFY_FIRST_OF_STAGE, True)
    assert fresh(rollout).issued_count == engine.NOTIFY_FIRST_OF_STAGE
    # then the next notifies the rest, up to a full batch
    second = evaluate(rollout, later(seconds=1, base=t0))
    assert (second.notified, second.more) == (400 - engine.NOTIFY_FIRST_OF_STAGE, False)
    assert len(rows(rollout, state="notified")) == 400
    # what the bridge compares with the decisive events it stored (ota.tasks)
    assert fresh(rollout).issued_count == 400


def test_notifying_takes_as_many_queries_for_many_devices_as_for_few():
    """No query per device (say, a deferred device field read one row at a time)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counted = []
    for n, name in ((20, "few"), (150, "many")):
        # a model each, so that the two rollouts do not overlap
        artifact("1.0.0", name=name)
        artifact("2.0.0", name=name)
        fleet = devices(n, prefix=name)
        rollout = phased(
            name=name,
            selection={"devices": [d.device_id for d in fleet]},
            policy={"rate_per_minute": 100_000},
        )
        with CaptureQueriesContext(connection) as queries:
            assert evaluate(rollout, later()).notified == min(n, engine.NOTIFY_FIRST_OF_STAGE)
        counted.append(len(queries))
    assert counted[1] == counted[0], counted
