"""Every refused assignment answers with its stable code and changes nothing."""

import pytest
from director_factories import HW, ArtifactFactory, ModelFactory, own_director_key
from django.utils import timezone

from device_agent.protocol.errors import ErrorCode
from fleet.director import ModelAssignment, device_desired_set
from fleet.errors import ServiceError
from fleet.models import DesiredState, Device

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    own_director_key(settings, tmp_path)


@pytest.fixture
def device() -> Device:
    """A device that already holds seq 1 (kws 1.0.0)."""
    device = Device.objects.create(device_id="dev-0001", hardware=HW)
    device_desired_set(
        device=device, assignments=[ModelAssignment(artifact=ArtifactFactory.create())]
    )
    return device


def _snapshot(device: Device) -> tuple[object, ...]:
    row = DesiredState.objects.get(device=device)
    return row.seq, row.payload, bytes(row.envelope), row.issued_at, row.published_seq


def _refused(device: Device, assignments: list[ModelAssignment], code: ErrorCode) -> str:
    before = _snapshot(device)
    with pytest.raises(ServiceError) as refused:
        device_desired_set(device=device, assignments=assignments)
    assert refused.value.code == code, refused.value.detail
    assert _snapshot(device) == before, "a refusal must change nothing"
    return refused.value.detail


def test_other_hardware_is_hw_mismatch(device):
    other = ArtifactFactory.create(version="1.1.0", release_counter=2, hardware="esp32s3-int8")
    detail = _refused(device, [ModelAssignment(artifact=other)], ErrorCode.HW_MISMATCH)
    assert "esp32s3-int8" in detail


def test_revoked_device_is_forbidden(device):
    # revoked by another process after the caller loaded the device
    Device.objects.filter(pk=device.pk).update(revoked_at=timezone.now())
    artifact = ArtifactFactory.create(version="1.1.0", release_counter=2)
    _refused(device, [ModelAssignment(artifact=artifact)], ErrorCode.FORBIDDEN)


def test_one_model_twice_is_malformed(device):
    a = ArtifactFactory.create(version="1.1.0", release_counter=2)
    b = ArtifactFactory.create(version="1.2.0", release_counter=3)
    detail = _refused(
        device, [ModelAssignment(artifact=a), ModelAssignment(artifact=b)], ErrorCode.MALFORMED
    )
    assert "twice" in detail


def test_first_assignment_refused_leaves_no_row(db):
    device = Device.objects.create(device_id="dev-new", hardware=HW)
    other = ArtifactFactory.create(hardware="esp32s3-int8")
    with pytest.raises(ServiceError):
        device_desired_set(device=device, assignments=[ModelAssignment(artifact=other)])
    assert not DesiredState.objects.filter(device=device).exists()


@pytest.mark.parametrize(
    ("fields", "code", "says"),
    [
        ({"version": "v1.1"}, ErrorCode.MALFORMED, "version"),
        ({"version": "1.1.0\n"}, ErrorCode.MALFORMED, "version"),
        ({"target_path": "models/kws/1.1.0/../../etc/passwd"}, ErrorCode.INVALID_TARGET_PATH, ""),
        ({"target_path": "/models/kws/1.1.0/hw/model.onnx"}, ErrorCode.INVALID_TARGET_PATH, ""),
        ({"target_path": f"models/vad/1.1.0/{HW}/model.onnx"}, ErrorCode.INVALID_TARGET_PATH, ""),
        ({"target_path": f"models/kws/1.1.0/{HW}/mo del.onnx"}, ErrorCode.INVALID_TARGET_PATH, ""),
        ({"sha256": "ABC"}, ErrorCode.MALFORMED, "sha256"),
        ({"release_counter": 2**60}, ErrorCode.MALFORMED, "release_counter"),
        ({"model": "kws\u202e"}, ErrorCode.MALFORMED, "name"),
    ],
)
def test_hostile_artifact_rows_are_refused_clearly(device, fields, code, says):
    # given an artifact row written straight into the database, past every API check
    if "model" in fields:
        fields = {**fields, "model": ModelFactory.create(name=fields["model"])}
    artifact = ArtifactFactory.create(**{"version": "1.1.0", "release_counter": 2, **fields})

    # then the wire format's own validation refuses it with a code, not a crash
    detail = _refused(device, [ModelAssignment(artifact=artifact)], code)
    assert f"artifact {artifact.pk}" in detail
    assert says in detail


def test_hostile_rollout_token_is_malformed(device):
    artifact = ArtifactFactory.create(version="1.1.0", release_counter=2)
    _refused(
        device,
        [ModelAssignment(artifact=artifact, rollout_id="r 1/#", arm="B")],
        ErrorCode.MALFORMED,
    )


def test_too_many_models_is_refused(device):
    artifacts = [ArtifactFactory.create(model=ModelFactory.create(name=f"m{i}")) for i in range(33)]
    _refused(device, [ModelAssignment(artifact=a) for a in artifacts], ErrorCode.MALFORMED)
