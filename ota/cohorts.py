"""Deterministic, sticky cohorts (docs/rollouts.md, Cohorts).

``bucket = sha256(rollout_id + device_id)`` mapped to [0, 1): a stage of p % takes the
ceil(p / 100 x N) devices of the rollout with the lowest buckets (``stage_bounds``), so a
device exposed at 1 % stays exposed at 10 %.

The arm is read from the *same* digest but from other bytes (``arm_point``), not from the
bucket: were the arm cut from the bucket, the first stages (small buckets) would hold only
the first arm. Bytes 0-7 and 8-15 of a SHA-256 are independent uniform values, so stage
exposure and arm are independent, and neither changes when the stage grows.
"""

import hashlib
import math
from collections.abc import Sequence

from ota.rollout_config import Arm

_SCALE = float(2**64)


def _digest(rollout_id: str, device_id: str) -> bytes:
    return hashlib.sha256(f"{rollout_id}{device_id}".encode()).digest()


def bucket(rollout_id: str, device_id: str) -> float:
    """The device's exposure bucket in [0, 1) for this rollout."""
    return int.from_bytes(_digest(rollout_id, device_id)[:8], "big") / _SCALE


def arm_point(rollout_id: str, device_id: str) -> float:
    """The device's arm-assignment point in [0, 1), independent of its bucket."""
    return int.from_bytes(_digest(rollout_id, device_id)[8:16], "big") / _SCALE


def in_stage(device_bucket: float, percent: float) -> bool:
    """Whether a bucket is below p / 100: roughly what a stage of p % takes of a large
    fleet (the engine cuts at ``stage_bounds``, exact on any fleet)."""
    return device_bucket < percent / 100


def stage_size(percent: float, devices: int) -> int:
    """How many of ``devices`` a stage of ``percent`` reaches: ceil(p / 100 x N).

    Rounded up so that a small stage of a small fleet still reaches a device, and rounded
    to 9 places first so that float noise (0.1 x 30 = 3.0000000000000004) adds none.
    """
    return min(devices, max(0, math.ceil(round(percent * devices / 100, 9))))


def stage_bounds(buckets: Sequence[float], percents: Sequence[float]) -> list[float]:
    """Per stage, the highest bucket it takes (``bucket <= bound``): the stage reaches the
    first ``stage_size`` devices of ``buckets`` in bucket order, so exactly ceil(p x N) of
    them, not however many buckets happen to fall below p / 100 (on 3 devices that was 0
    to 3 for any stage). -1 takes none; 1.0 takes all."""
    ordered = sorted(buckets)
    bounds = []
    for percent in percents:
        size = stage_size(percent, len(ordered))
        bounds.append(1.0 if size == len(ordered) else ordered[size - 1] if size else -1.0)
    return bounds


def arm_for(point: float, arms: Sequence[Arm]) -> Arm:
    """The arm whose share of [0, 1) (proportional to its weight, in list order) holds point."""
    total = sum(a.weight for a in arms)
    edge = 0.0
    for arm in arms:
        edge += arm.weight / total
        if point < edge:
            return arm
    return arms[-1]  # point just below 1 and float rounding in the sum


def assign(rollout_id: str, device_id: str, arms: Sequence[Arm]) -> tuple[float, Arm]:
    """(bucket, arm) of one device: what a rollout stores for it when it starts."""
    digest = _digest(rollout_id, device_id)
    point = int.from_bytes(digest[8:16], "big") / _SCALE
    return int.from_bytes(digest[:8], "big") / _SCALE, arm_for(point, arms)
