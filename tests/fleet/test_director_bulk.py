"""The bulk path a rollout tick uses: same envelopes as one by one, a bounded number of
queries, and a refused device does not stop the others."""

import pytest
from director_factories import HW, ArtifactFactory, ModelFactory, own_director_key
from django.utils import timezone

from device_agent.protocol.envelope import verify_desired
from device_agent.protocol.errors import ErrorCode
from fleet.director import ModelAssignment, device_desired_set, devices_desired_set
from fleet.errors import ServiceError
from fleet.keys import director_public_pem
from fleet.models import DesiredState, Device

pytestmark = [pytest.mark.django_db, pytest.mark.db_both]


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    own_director_key(settings, tmp_path)


def test_bulk_set_signs_merges_and_reports_refusals(django_assert_max_num_queries):
    # given 200 devices: some already run vad, one is revoked, one is other hardware
    devices = [Device.objects.create(device_id=f"dev-{i:04d}", hardware=HW) for i in range(200)]
    vad = ArtifactFactory.create(model=ModelFactory.create(name="vad"), version="2.0.0")
    for device in devices[:10]:
        device_desired_set(device=device, assignments=[ModelAssignment(artifact=vad)])
    Device.objects.filter(device_id="dev-0003").update(revoked_at=timezone.now())
    esp = Device.objects.create(device_id="esp-0001", hardware="esp32s3-int8")
    kws = ArtifactFactory.create(version="1.4.0", release_counter=14)
    before = {row.device_id: (row.seq, bytes(row.envelope)) for row in DesiredState.objects.all()}

    def assignments_for(device: Device) -> list[ModelAssignment]:
        if device.device_id == "dev-0007":
            raise ServiceError(ErrorCode.CONFLICT, "the rollout says no")
        arm = "A" if int(device.device_id[4:]) % 2 else "B"
        return [ModelAssignment(artifact=kws, rollout_id="r-1", arm=arm)]

    # when one call assigns kws 1.4.0 to all of them, in batches of 64
    with django_assert_max_num_queries(40):
        result = devices_desired_set(
            devices=[*devices, esp], assignments_for=assignments_for, batch_size=64
        )

    # then the refused ones are reported and untouched, every other one is signed
    assert {d: e.code for d, e in result.refused.items()} == {
        "dev-0003": ErrorCode.FORBIDDEN,
        "dev-0007": ErrorCode.CONFLICT,
        "esp-0001": ErrorCode.HW_MISMATCH,
    }
    assert result.issued == 198
    rows = {row.device.device_id: row for row in DesiredState.objects.select_related("device")}
    assert "esp-0001" not in rows, "no outbox row for a refused device"
    for device_id in result.refused:
        row = rows.get(device_id)
        assert row is None or (row.seq, bytes(row.envelope)) == before[row.device_id]
    pem = director_public_pem()
    for device in devices:
        if device.device_id in result.refused:
            continue
        desired = verify_desired(bytes(rows[device.device_id].envelope), pem)
        index = int(device.device_id[4:])
        assert desired.device_id == device.device_id
        assert desired.seq == (2 if index < 10 else 1)
        assert {m.name: (m.version, m.arm) for m in desired.models} == {
            "kws": ("1.4.0", "A" if index % 2 else "B"),
            **({"vad": ("2.0.0", None)} if index < 10 else {}),
        }
        assert rows[device.device_id].payload == desired.to_dict()


def test_bulk_and_single_paths_share_the_seq(db):
    device = Device.objects.create(device_id="dev-1", hardware=HW)
    kws = ArtifactFactory.create()
    device_desired_set(device=device, assignments=[])

    devices_desired_set(devices=[device], assignments_for=lambda d: [ModelAssignment(artifact=kws)])
    row = device_desired_set(device=device, assignments=[])

    assert row.seq == 3
    assert [m["name"] for m in row.payload["models"]] == ["kws"]


def test_a_device_listed_twice_is_malformed(db):
    device = Device.objects.create(device_id="dev-1", hardware=HW)
    with pytest.raises(ServiceError) as refused:
        devices_desired_set(devices=[device, device], assignments_for=lambda d: [])
    assert refused.value.code == ErrorCode.MALFORMED
    assert not DesiredState.objects.exists()


def test_repeated_bulk_sets_in_one_transaction_keep_the_latest():
    # The PostgreSQL path stages rows in a temporary table: a second batch in the same
    # transaction must not apply the first batch's rows again.
    from django.db import transaction

    devices = [Device.objects.create(device_id=f"tx-{i:03d}", hardware=HW) for i in range(30)]
    model = ModelFactory.create(name="txm")
    versions = [
        ArtifactFactory.create(model=model, version=f"1.0.{n}", release_counter=n + 1)
        for n in range(3)
    ]
    with transaction.atomic():
        for artifact in versions:
            devices_desired_set(
                devices=devices,
                assignments_for=lambda d, a=artifact: [ModelAssignment(artifact=a)],  # type: ignore[misc]
                batch_size=7,
            )
    pem = director_public_pem()
    for row in DesiredState.objects.filter(device__in=devices):
        signed = verify_desired(bytes(row.envelope), pem)
        assert row.seq == signed.seq == 3
        assert signed.models[0].version == "1.0.2"


@pytest.mark.parametrize("total", [0, 1, 124, 125, 126, 999, 1000, 1001, 2500, 10_000, 12_345])
@pytest.mark.parametrize("largest", [1, 100, 1000])
def test_batch_sizes_cover_every_device_once_and_ramp(total: int, largest: int) -> None:
    from fleet.director import FIRST_BATCH, _batch_sizes

    sizes = _batch_sizes(total, largest)
    assert sum(sizes) == total
    assert all(0 < size <= largest for size in sizes)
    if total >= 4 * largest >= 4 * FIRST_BATCH:
        # small batches first and last, so publishing starts early and ends soon after
        assert sizes[0] == sizes[-1] == FIRST_BATCH
        assert max(sizes) == largest


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"v": 1}, id="no-models"),
        pytest.param({"models": "kws"}, id="models-not-a-list"),
        pytest.param({"models": [{"name": "kws"}]}, id="entry-missing-fields"),
        pytest.param({"models": [[1, 2]]}, id="entry-not-an-object"),
        pytest.param(["not", "an", "object"], id="payload-a-list"),
    ],
)
def test_a_corrupt_stored_row_refuses_that_device_only(payload) -> None:
    # given two devices with a desired state, one of whose stored payload is corrupt
    devices = [Device.objects.create(device_id=f"dev-{i}", hardware=HW) for i in range(2)]
    old = ArtifactFactory.create(version="1.3.0", release_counter=13)
    for device in devices:
        device_desired_set(device=device, assignments=[ModelAssignment(artifact=old)])
    DesiredState.objects.filter(device=devices[0]).update(payload=payload)
    corrupt = DesiredState.objects.get(device=devices[0])
    new = ArtifactFactory.create(model=old.model, version="1.4.0", release_counter=14)

    # when the bulk path assigns a new version to both
    result = devices_desired_set(
        devices=devices, assignments_for=lambda d: [ModelAssignment(artifact=new)]
    )

    # then the corrupt one is refused as malformed and left as it was; the other goes ahead
    assert result.issued == 1
    assert result.refused["dev-0"].code == ErrorCode.MALFORMED
    assert DesiredState.objects.get(device=devices[0]).seq == corrupt.seq
    assert DesiredState.objects.get(device=devices[1]).payload["models"][0]["version"] == "1.4.0"
