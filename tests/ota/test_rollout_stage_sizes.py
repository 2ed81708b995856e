"""A stage of p % reaches exactly ceil(p / 100 x N) of the rollout's N devices, the ones
with the lowest buckets (sticky cohort order): on small fleets too, where taking the
buckets below p / 100 gave any count (a 34 % stage took all 3 devices)."""

import math

import pytest
from rollout_helpers import (
    HW2,
    artifact,
    commit_all,
    devices,
    evaluate,
    fresh,
    later,
    phased,
    rows,
    use_own_director_key,
)

from ota import cohorts
from ota.models import RolloutStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


@pytest.mark.parametrize(
    ("percent", "n", "size"),
    [
        (34, 3, 2),
        (67, 3, 3),
        (33, 3, 1),
        (66, 3, 2),
        (1, 3, 1),
        (10, 30, 3),  # 0.1 x 30 is 3.0000000000000004 in floats: still 3
        (50, 7, 4),
        (100, 7, 7),
        (0.5, 1000, 5),
        (10, 0, 0),
    ],
)
def test_stage_size_is_the_ceiling_of_its_share(percent: float, n: int, size: int) -> None:
    assert cohorts.stage_size(percent, n) == size


def _notified_per_stage(n: int, percents: list[float]) -> list[int]:
    """Run a phased rollout on ``n`` devices; how many it reached at each stage."""
    artifact("2.0.0")
    devices(n)
    rollout = phased(
        stages=[{"percent": p} for p in percents],
        policy={"rate_per_minute": 10_000},
    )
    reached, t = [], later()
    for _ in percents:
        evaluate(rollout, t)
        exposed = rows(rollout, attempts__gt=0)
        reached.append(len(exposed))
        # sticky, in bucket order: the exposed devices are those with the lowest buckets
        all_buckets = sorted(r.bucket for r in rows(rollout))
        assert sorted(r.bucket for r in exposed) == all_buckets[: len(exposed)]
        commit_all(rollout, t)
        t = later(1, base=t)
        evaluate(rollout, t)
        t = later(1, base=t)
    evaluate(rollout, t)  # a last stage that adds no device completes on the next look
    assert fresh(rollout).status == RolloutStatus.COMPLETED
    return reached


@pytest.mark.parametrize(
    ("n", "percents"),
    [
        (3, [34, 67, 100]),
        (3, [33, 66, 100]),
        (7, [10, 34, 67, 100]),
        (12, [1, 25, 50, 100]),
    ],
)
def test_each_stage_reaches_the_ceiling_of_its_share_of_the_devices(n, percents):
    # when a phased rollout runs through its stages on a small fleet
    reached = _notified_per_stage(n, percents)

    # then stage k has reached exactly ceil(p_k / 100 x n) devices
    assert reached == [math.ceil(round(p * n / 100, 9)) for p in percents]


def test_the_quick_starts_stages_reach_one_two_three_of_three_devices():
    from fleet.sample import STAGES

    reached = _notified_per_stage(3, [s["percent"] for s in STAGES])
    assert reached == [1, 2, 3]


def test_skipped_devices_do_not_count_towards_a_stage():
    # given 4 devices that can take 2.0.0 and 4 whose hardware has no variant of it
    artifact("2.0.0")
    devices(4)
    devices(4, hardware=HW2, prefix="esp")
    rollout = phased(stages=[{"percent": 50}, {"percent": 100}])

    # when the first stage opens, it reaches half of the 4 devices that can take it
    evaluate(rollout)
    assert len(rows(rollout, state="notified")) == 2
    assert len(rows(rollout, state="skipped")) == 4
