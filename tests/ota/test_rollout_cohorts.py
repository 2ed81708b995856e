"""Cohorts: deterministic, sticky across stages, and distributed as the percentages and
weights say (pure functions, no database)."""

import hashlib
from collections import Counter

import pytest

from ota import cohorts
from ota.rollout_config import Arm

IDS = [f"dev-{i:05d}" for i in range(10_000)]
ARMS = (
    Arm(name="A", version="1.0.0", weight=70, baseline=True),
    Arm(name="B", version="2.0.0", weight=20),
    Arm(name="C", version="2.1.0", weight=10),
)


def test_bucket_is_the_documented_hash():
    digest = hashlib.sha256(b"r-9dev-0042").digest()
    assert cohorts.bucket("r-9", "dev-0042") == int.from_bytes(digest[:8], "big") / 2**64


def test_bucket_is_deterministic_in_range_and_differs_between_rollouts():
    first = [cohorts.bucket("r-1", d) for d in IDS]
    assert first == [cohorts.bucket("r-1", d) for d in IDS]
    assert all(0.0 <= b < 1.0 for b in first)
    other = [cohorts.bucket("r-2", d) for d in IDS]
    # another rollout shuffles the fleet: the first 1 % are mostly different devices
    low1 = {d for d, b in zip(IDS, first, strict=True) if b < 0.01}
    low2 = {d for d, b in zip(IDS, other, strict=True) if b < 0.01}
    assert len(low1 & low2) < len(low1) / 2


@pytest.mark.parametrize("percent", [1, 10, 50, 100])
def test_stage_share_matches_the_percentage(percent):
    share = sum(cohorts.in_stage(cohorts.bucket("r-7", d), percent) for d in IDS) / len(IDS)
    # binomial standard deviation at n=10 000 is at most 0.5 %; allow about 4 of them
    assert abs(share - percent / 100) < 0.02


def test_stages_only_grow_the_exposed_set():
    exposed = [
        {d for d in IDS if cohorts.in_stage(cohorts.bucket("r-7", d), p)} for p in (1, 10, 50, 100)
    ]
    for smaller, larger in zip(exposed, exposed[1:], strict=False):
        assert smaller < larger
    assert exposed[-1] == set(IDS)


def test_arm_shares_match_weights():
    arms = Counter(cohorts.assign("r-3", d, ARMS)[1].name for d in IDS)
    assert abs(arms["A"] / len(IDS) - 0.7) < 0.02
    assert abs(arms["B"] / len(IDS) - 0.2) < 0.02
    assert abs(arms["C"] / len(IDS) - 0.1) < 0.02


def test_arm_is_independent_of_the_stage():
    # were the arm cut from the bucket, a 10 % stage would hold only arm A (weight 70 %)
    exposed = [d for d in IDS if cohorts.bucket("r-3", d) < 0.10]
    arms = Counter(cohorts.assign("r-3", d, ARMS)[1].name for d in exposed)
    assert set(arms) == {"A", "B", "C"}
    assert abs(arms["B"] / len(exposed) - 0.2) < 0.05


def test_a_device_keeps_its_arm_as_stages_grow():
    # the arm depends on (rollout, device) only: no stage argument exists to change it
    for device_id in IDS[:200]:
        bucket, arm = cohorts.assign("r-5", device_id, ARMS)
        assert bucket == cohorts.bucket("r-5", device_id)
        assert arm == cohorts.arm_for(cohorts.arm_point("r-5", device_id), ARMS)


def test_arm_for_edges():
    two = (Arm(name="A", version="1.0.0", weight=1), Arm(name="B", version="2.0.0", weight=3))
    assert cohorts.arm_for(0.0, two).name == "A"
    assert cohorts.arm_for(0.2499, two).name == "A"
    assert cohorts.arm_for(0.25, two).name == "B"
    assert cohorts.arm_for(0.999999999, two).name == "B"
