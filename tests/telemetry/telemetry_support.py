"""Helpers for the telemetry tests: payloads, enrolled devices, registered models."""

import json
from datetime import UTC, datetime, timedelta

from django.utils import timezone

from device_agent.protocol.messages import TelemetryBatch, TelemetrySample, format_timestamp
from fleet.models import Device
from ota.models import Model, Rollout, RolloutStatus, RolloutStrategy

HARDWARE = "linux-x86_64-fp32"


def make_device(device_id: str, **fields: object) -> Device:
    fields.setdefault("hardware", HARDWARE)
    return Device.objects.create(device_id=device_id, **fields)


def register_model(name: str = "kws") -> Model:
    return Model.objects.get_or_create(name=name)[0]


def live_rollout(
    pk: int,
    *,
    model: str = "kws",
    arms: tuple[str, ...] = ("A", "B"),
    status: str = RolloutStatus.RUNNING,
) -> Rollout:
    """Rollout ``r-<pk>`` of `model` with `arms` (phased without any), as the bridge reads
    it for the model histograms' `rollout` label: only its status and arms matter."""
    return Rollout.objects.create(
        pk=pk,
        model=register_model(model),
        strategy=RolloutStrategy.AB if arms else RolloutStrategy.PHASED,
        arms=[
            {"name": arm, "version": "1.4.0", "weight": 1.0, "baseline": i == 0}
            for i, arm in enumerate(arms)
        ],
        status=status,
    )


def now_utc() -> datetime:
    return timezone.now().astimezone(UTC).replace(microsecond=0)


def sample(
    *,
    ts: datetime | None = None,
    model: str = "kws",
    version: str = "1.4.0",
    rollout_id: str | None = "r-9",
    arm: str | None = "B",
    latency_ms: float = 12.5,
    confidence: float = 0.93,
    **extra: float,
) -> TelemetrySample:
    return TelemetrySample(
        model=model,
        version=version,
        rollout_id=rollout_id,
        arm=arm,
        metrics={"latency_ms": latency_ms, "confidence": confidence, **extra},
        ts=ts or now_utc(),
    )


def batch(*samples: TelemetrySample) -> TelemetryBatch:
    return TelemetryBatch(samples=samples or (sample(),))


def payload(*samples: TelemetrySample) -> bytes:
    return batch(*samples).to_json()


def raw_sample_dict(**overrides: object) -> dict[str, object]:
    """A telemetry sample as JSON members, for payloads the protocol classes refuse to build."""
    base: dict[str, object] = {
        "model": "kws",
        "version": "1.4.0",
        "rollout_id": "r-9",
        "arm": "B",
        "metrics": {"latency_ms": 12.5, "confidence": 0.93},
        "ts": format_timestamp(now_utc()),
    }
    base.update(overrides)
    return base


def raw_payload(*samples: dict[str, object], **top: object) -> bytes:
    return json.dumps({"v": 1, "samples": list(samples), **top}).encode()


def years(n: int) -> timedelta:
    return timedelta(days=365 * n)
