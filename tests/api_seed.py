"""A small fleet with at least two rows behind every list of the REST API, for the API's
list and schema tests (importable from any test module: tests/ is on sys.path)."""

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone

from fleet.auth import ALL_MODELS, ROLES, SCOPE_USER
from fleet.models import Device, DynamicGroup, Group
from fleet.registry import device_labels_set
from fleet.services import api_token_create, service_account_get_or_create
from ota import rollouts
from ota.models import Artifact, Model, Rollout
from telemetry.models import Granularity, Rollup, Sample

HW = "linux-x86_64-fp32"


@dataclass
class Seeded:
    operator_token: str
    ci_token: str
    rollouts: list[Rollout]


def _artifact(model: Model, version: str, by: User, *, blob: bool) -> Artifact:
    path = f"models/{model.name}/{version}/{HW}/model.onnx"
    data = path.encode().ljust(1000, b".")
    if blob:
        storages["artifacts"].save(path, ContentFile(data))
    major, minor, patch = (int(p) for p in version.split("."))
    return Artifact.objects.create(
        model=model,
        version=version,
        hardware=HW,
        format="onnx",
        release_counter=major * 100 + minor * 10 + patch,
        target_path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        length=1000,
        storage_key=path,
        published_by=by,
        metadata_version=1,
    )


def api_seed(*, artifact_storage: bool = False) -> Seeded:
    """Two or more of everything; rollout ``rollouts[0]`` is started (it has devices).

    With ``artifact_storage`` the artifacts' bytes are written to the artifact storage
    (point it at the test's own directory first: the ``storage_dirs`` fixture)."""
    operator = User.objects.create_superuser("operator", "op@example.com", "pw-long-123456")
    ci = service_account_get_or_create(username="ci", scopes=ROLES["ci"])
    for name in ("kws", "vad"):
        model = Model.objects.create(name=name, description=f"{name} model")
        for version in ("1.0.0", "1.1.0"):
            _artifact(model, version, ci, blob=artifact_storage)
    Device.objects.bulk_create(
        [Device(device_id=f"dev-{i:03d}", hardware=HW, online=i % 2 == 0) for i in range(4)]
    )
    for name in ("canary", "lab"):
        Group.objects.create(name=name, description=f"the {name} devices")
        DynamicGroup.objects.create(name=f"{name}-x86", hardware=[HW], tags=[])
    for device in Device.objects.all():
        device_labels_set(device=device, tags=["cam"], groups=["canary", "lab"])
    made = [
        rollouts.rollout_create(
            model_name=name,
            strategy="phased",
            version="1.1.0",
            stages=[{"percent": 50, "bake_minutes": 1}, {"percent": 100}],
            selection={"all": True},
            by=operator,
        )
        for name in ("kws", "vad")
    ]
    started = rollouts.rollout_start(rollout=made[0], by=operator, reason="seed")
    rollouts.rollout_pause(rollout=started, by=operator, reason="seed")
    now = timezone.now().replace(microsecond=0)
    device = Device.objects.get(device_id="dev-000")
    for i in range(2):
        Sample.objects.create(
            device=device,
            ts=now - timedelta(minutes=i + 1),
            model="kws",
            version="1.1.0",
            rollout_id=started.public_id,
            arm="main",
            metric="latency_ms",
            value=10.0 + i,
        )
        Rollup.objects.create(
            bucket_seconds=Granularity.MINUTE,
            bucket_start=now - timedelta(minutes=i + 1),
            model="kws",
            version="1.1.0",
            rollout_id=started.public_id,
            arm="main",
            metric="latency_ms",
            count=1,
            sum=10.0,
            sum_squares=100.0,
            mean=10.0,
            min=10.0,
            max=10.0,
            p50=10.0,
            p95=10.0,
            p99=10.0,
            computed_at=now,
        )
    return Seeded(
        # the operator's own token carries all of their rights; CI's, its role's
        operator_token=api_token_create(user=operator, name="operator", scopes=[SCOPE_USER])[1],
        ci_token=api_token_create(user=ci, name="ci", scopes=ROLES["ci"], model_names=[ALL_MODELS])[
            1
        ],
        rollouts=[started, made[1]],
    )
