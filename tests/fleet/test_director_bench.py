"""Director benchmark: sign and write desired states for 10 000 devices in one call, as a
rollout tick would, then re-sign them all as the expiry task would.

Prints wall-clock figures (nothing about time is asserted: the machine is noisy); checks
that every device got a verifiable envelope. Run with
``pytest tests/fleet/test_director_bench.py -m bench -s`` (with and without DATABASE_URL).
"""

import time
from datetime import timedelta

import pytest
from director_factories import HW, ArtifactFactory, ModelFactory, own_director_key
from django.db import connection
from django.utils import timezone

from device_agent.protocol.envelope import sign_desired, verify_desired
from device_agent.protocol.messages import DesiredState as DesiredPayload
from fleet.director import ModelAssignment, desired_reissue_expiring, devices_desired_set
from fleet.keys import director_private_key, director_public_pem
from fleet.models import DesiredState, Device

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

DEVICES = 10_000


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    own_director_key(settings, tmp_path)


def _timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    print(
        f"director bench [{connection.vendor}] {label}: {elapsed:.2f} s "
        f"({elapsed / DEVICES * 1e6:.0f} us/device)"
    )
    return result


def test_bench_desired_state_for_10k_devices():
    Device.objects.bulk_create(
        Device(device_id=f"dev-{i:05d}", hardware=HW) for i in range(DEVICES)
    )
    devices = list(Device.objects.order_by("pk"))
    kws = ArtifactFactory.create(version="1.4.0", release_counter=14)
    vad = ArtifactFactory.create(model=ModelFactory.create(name="vad"), version="2.0.0")
    director_private_key()  # key generation is not what is measured

    def arm(device: Device) -> str:
        return "A" if device.pk % 2 else "B"

    first = _timed(
        "first assignment (outbox rows created)",
        lambda: devices_desired_set(
            devices=devices,
            assignments_for=lambda d: [ModelAssignment(artifact=kws, rollout_id="r-1", arm=arm(d))],
        ),
    )
    second = _timed(
        "second model merged into existing rows",
        lambda: devices_desired_set(
            devices=devices,
            assignments_for=lambda d: [ModelAssignment(artifact=vad, rollout_id="r-2", arm="A")],
        ),
    )
    pem = director_public_pem()
    reissued = _timed(
        "re-sign all (expiry task)",
        lambda: desired_reissue_expiring(within=timedelta(days=30)),
    )

    # reference: the same payloads (two models) built and signed, no database at all
    written = DesiredState.objects.first()
    assert written is not None
    models = verify_desired(bytes(written.envelope), pem).models
    now = timezone.now().replace(microsecond=0)
    _timed(
        "reference: build + sign only, no database",
        lambda: [
            sign_desired(
                DesiredPayload(
                    device_id=d.device_id,
                    seq=3,
                    issued_at=now,
                    expires_at=now + timedelta(days=7),
                    models=models,
                ),
                director_private_key(),
            )
            for d in devices
        ],
    )

    assert first.issued == second.issued == reissued == DEVICES
    assert not first.refused
    assert not second.refused
    assert DesiredState.objects.filter(seq=3).count() == DEVICES
    for row in DesiredState.objects.order_by("?")[:50]:
        desired = verify_desired(bytes(row.envelope), pem)
        assert desired.seq == 3
        assert [m.name for m in desired.models] == ["kws", "vad"]
