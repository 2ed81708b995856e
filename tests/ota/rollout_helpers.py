"""Helpers for the rollout tests (no tests here): artifacts, devices, users, device reports
through the same services the bridge calls, and evaluation at a chosen time."""

import hashlib
from datetime import datetime, timedelta
from itertools import count
from typing import Any

from director_keys import own_director_key as use_own_director_key  # noqa: F401 - re-exported
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import (
    ModelState,
    Phase,
    ReportedState,
    Slot,
    UpdateEvent,
)
from fleet.models import DesiredState, Device, DeviceEvent
from fleet.reports import device_event_record, device_state_record
from ota import engine, rollouts
from ota.models import Artifact, Model, Rollout, RolloutDevice

HW = "linux-x86_64-fp32"
HW2 = "esp32s3-int8"
_events = count(1)


def user(name: str, *perms: str, staff: bool = False) -> User:
    account, _ = User.objects.get_or_create(username=name, defaults={"is_staff": staff})
    for perm in perms:
        app_label, codename = perm.split(".")
        account.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return User.objects.get(pk=account.pk)  # fresh: permissions are cached per instance


def operator() -> User:
    return user(
        "operator",
        "ota.view_rollout",
        "ota.add_rollout",
        "ota.start_rollout",
        "ota.control_rollout",
    )


def model(name: str = "kws") -> Model:
    return Model.objects.get_or_create(name=name)[0]


def artifact(
    version: str,
    hardware: str = HW,
    *,
    counter: int | None = None,
    floor: int = 0,
    name: str = "kws",
) -> Artifact:
    """A published variant row (no TUF metadata: the engine never reads it)."""
    path = f"models/{name}/{version}/{hardware}/model.onnx"
    major, minor, patch = (int(p) for p in version.split(".")[:3])
    return Artifact.objects.create(
        model=model(name),
        version=version,
        hardware=hardware,
        format="onnx",
        release_counter=counter if counter is not None else major * 100 + minor * 10 + patch,
        floor=floor,
        target_path=path,
        sha256=hashlib.sha256(path.encode()).hexdigest(),
        length=1000,
        storage_key=path,
        published_by=user("ci"),
        metadata_version=1,
    )


def devices(n: int, hardware: str = HW, prefix: str = "dev") -> list[Device]:
    Device.objects.bulk_create(
        [Device(device_id=f"{prefix}-{i:05d}", hardware=hardware) for i in range(n)]
    )
    return list(Device.objects.filter(device_id__startswith=f"{prefix}-").order_by("device_id"))


def phased(
    *,
    version: str = "2.0.0",
    stages: list[dict[str, float]] | None = None,
    policy: dict[str, Any] | None = None,
    selection: dict[str, Any] | None = None,
    by: User | None = None,
    start: bool = True,
    name: str = "kws",
) -> Rollout:
    by = by or operator()
    rollout = rollouts.rollout_create(
        model_name=name,
        strategy="phased",
        version=version,
        stages=stages or [{"percent": 100}],
        selection=selection or {"all": True},
        policy=policy,
        by=by,
    )
    return rollouts.rollout_start(rollout=rollout, by=by) if start else rollout


def ab(
    *,
    arms: list[dict[str, Any]],
    stages: list[dict[str, float]] | None = None,
    policy: dict[str, Any] | None = None,
    selection: dict[str, Any] | None = None,
    start: bool = True,
) -> Rollout:
    by = operator()
    rollout = rollouts.rollout_create(
        model_name="kws",
        strategy="ab",
        arms=arms,
        stages=stages or [{"percent": 100}],
        selection=selection or {"all": True},
        policy=policy,
        by=by,
    )
    return rollouts.rollout_start(rollout=rollout, by=by) if start else rollout


def evaluate(rollout: Rollout, at: datetime | None = None) -> engine.Evaluation:
    return engine.rollout_evaluate(rollout_id=rollout.public_id, now=at)


def fresh(rollout: Rollout) -> Rollout:
    return Rollout.objects.select_related("model").get(pk=rollout.pk)


def rows(rollout: Rollout, **filters: Any) -> list[RolloutDevice]:
    return list(
        RolloutDevice.objects.filter(rollout=rollout, **filters)
        .select_related("device", "artifact", "previous_artifact")
        .order_by("bucket")
    )


def states(rollout: Rollout) -> dict[str, str]:
    return {r.device.device_id: r.state for r in rows(rollout)}


def desired_entry(device: Device, name: str = "kws") -> dict[str, Any] | None:
    row = DesiredState.objects.filter(device=device).first()
    if row is None:
        return None
    return next((m for m in row.payload["models"] if m["name"] == name), None)


def desired_seq(device: Device) -> int:
    row = DesiredState.objects.filter(device=device).first()
    return row.seq if row else 0


def report(
    device: Device,
    rollout: Rollout | str | None,
    phase: Phase,
    *,
    seq: int | None = None,
    code: ErrorCode | None = None,
    at: datetime | None = None,
    name: str | None = "kws",
) -> bool:
    """The device reports an update event (stored as the bridge would); True if new.

    ``at`` puts it on the test's clock: the device's ts and the server's received_at.
    """
    rollout_id = rollout.public_id if isinstance(rollout, Rollout) else rollout
    if code is None and phase in (Phase.FAILED, Phase.REJECTED, Phase.ROLLED_BACK):
        code = ErrorCode.HEALTH_CHECK_FAILED
    event = UpdateEvent(
        seq=seq if seq is not None else desired_seq(device),
        rollout_id=rollout_id,
        model=name,
        phase=phase,
        progress=None,
        code=code,
        detail=f"#{next(_events)}",
        ts=(at or timezone.now()).replace(microsecond=0),
    )
    stored, created = device_event_record(device=device, event=event)
    if at is not None and created:
        DeviceEvent.objects.filter(pk=stored.pk).update(received_at=at)
    return created


def report_state(
    device: Device, version: str, counter: int, *, last_seq: int | None = None
) -> None:
    """The device's retained state: it runs kws ``version`` and accepted ``last_seq``."""
    device.refresh_from_db()
    state = ReportedState(
        agent_version="test",
        hardware=device.hardware,
        models=(
            ModelState(
                name="kws",
                version=version,
                release_counter=counter,
                slot=Slot.A,
                status=Phase.COMMITTED,
            ),
        ),
        last_seq=last_seq if last_seq is not None else desired_seq(device),
    )
    device_state_record(device=device, state=state)


def commit_all(rollout: Rollout, at: datetime | None = None) -> int:
    """Every notified device of the rollout reports `committed`."""
    done = 0
    for row in rows(rollout, state__in=["notified", "in_progress", "rolling_back"]):
        report(row.device, rollout, Phase.COMMITTED, at=at)
        done += 1
    return done


def later(minutes: float = 0, seconds: float = 0, base: datetime | None = None) -> datetime:
    return (base or timezone.now()) + timedelta(minutes=minutes, seconds=seconds)
