"""The per-arm outcome counts the gates read (ota.engine._outcomes): every state in its
place, and finished devices counted only from ``gates_since`` (a resume)."""

import random
from datetime import timedelta

import pytest
from django.utils import timezone
from rollout_helpers import ab, artifact, devices, use_own_director_key

from ota import engine
from ota.gates import Outcomes
from ota.models import Rollout, RolloutDevice, RolloutDeviceState

pytestmark = pytest.mark.django_db
D = RolloutDeviceState
FIELD: dict[str, str] = {
    D.SUCCEEDED: "succeeded",
    D.FAILED: "failed",
    D.TIMED_OUT: "timed_out",
    D.NOTIFIED: "in_flight",
    D.IN_PROGRESS: "in_flight",
    D.PENDING: "pending",
    D.SKIPPED: "skipped",
}
FINISHED = {D.SUCCEEDED, D.FAILED, D.TIMED_OUT}


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def _expected(rollout: Rollout) -> dict[str, Outcomes]:
    since = rollout.gates_since
    counts: dict[str, dict[str, int]] = {}
    for row in RolloutDevice.objects.filter(rollout=rollout):
        arm = counts.setdefault(row.arm, {})
        recent = since is None or (row.phase_at is not None and row.phase_at >= since)
        if row.state in FIELD and (row.state not in FINISHED or recent):
            arm[FIELD[row.state]] = arm.get(FIELD[row.state], 0) + 1
    return {name: Outcomes(**c) for name, c in counts.items()}


@pytest.mark.parametrize("resumed", [False, True])
def test_every_state_counts_in_its_place_and_finished_ones_from_the_resume(resumed: bool) -> None:
    artifact("1.0.0")
    artifact("2.0.0")
    devices(120)
    rollout = ab(
        arms=[
            {"name": "A", "version": "1.0.0", "weight": 50, "baseline": True},
            {"name": "B", "version": "2.0.0", "weight": 50},
        ]
    )
    # given every state, with phase times on both sides of a resume (and none)
    now = timezone.now()
    rng = random.Random(7)  # noqa: S311 - a fixed mix of states, not a secret
    states = list(D)
    for row in RolloutDevice.objects.filter(rollout=rollout):
        row.state = rng.choice(states)
        row.phase_at = rng.choice([None, now - timedelta(hours=1), now + timedelta(hours=1)])
        row.save(update_fields=["state", "phase_at"])
    if resumed:
        Rollout.objects.filter(pk=rollout.pk).update(gates_since=now)
    rollout.refresh_from_db()

    # when the engine counts them
    outcomes = engine._outcomes(rollout)

    # then each arm's counts are what the rows say, rolled-back and kept rows in none
    expected = _expected(rollout)
    assert outcomes == expected
    assert set(outcomes) == {"A", "B"}
    assert sum(o.finished for o in outcomes.values()) > 0
