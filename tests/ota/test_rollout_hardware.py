"""Each hardware target gets its own variant of the version; devices with none are listed
as skipped and never sent anything."""

import pytest
from rollout_helpers import (
    HW,
    HW2,
    artifact,
    desired_entry,
    devices,
    evaluate,
    fresh,
    phased,
    report_state,
    rows,
    use_own_director_key,
)

from fleet.models import DesiredState
from ota.models import RolloutAuditEvent
from ota.rollout_selectors import rollout_progress

pytestmark = pytest.mark.django_db
JETSON = "jetson-orin-fp16"


@pytest.fixture(autouse=True)
def _keys(settings, tmp_path):
    use_own_director_key(settings, tmp_path)


def test_each_hardware_gets_its_variant_and_the_rest_is_skipped():
    # given 2.0.0 built for linux and esp32, and a fleet that also has jetsons
    linux_variant = artifact("2.0.0", HW)
    esp_variant = artifact("2.0.0", HW2)
    linux = devices(3, HW, prefix="lnx")
    esp = devices(3, HW2, prefix="esp")
    jetsons = devices(2, JETSON, prefix="jet")
    rollout = phased()

    # when the rollout starts and notifies
    evaluate(rollout)

    # then every linux and esp32 device got its own variant
    for device in linux:
        entry = desired_entry(device)
        assert entry is not None
        assert (entry["path"], entry["hardware"]) == (linux_variant.target_path, HW)
    for device in esp:
        entry = desired_entry(device)
        assert entry is not None
        assert (entry["path"], entry["sha256"]) == (esp_variant.target_path, esp_variant.sha256)
    # and the jetsons are listed as skipped (hw_mismatch) and were never sent anything
    skipped = rows(rollout, state="skipped")
    assert {r.device.device_id for r in skipped} == {d.device_id for d in jetsons}
    assert {r.last_code for r in skipped} == {"hw_mismatch"}
    assert not DesiredState.objects.filter(device__in=jetsons).exists()
    assert rollout_progress(fresh(rollout))["total"] == {"notified": 6, "skipped": 2}
    started = RolloutAuditEvent.objects.filter(rollout=rollout, to_status="running").get()
    assert started.figures == {"devices": 8, "skipped": 2}


def test_a_device_is_skipped_when_its_known_floor_forbids_the_version():
    # given a device that runs 3.0.0, whose floor (30) forbids anything below it
    artifact("3.0.0", counter=30, floor=30)
    artifact("2.0.0", counter=20)
    (device,) = devices(1)
    report_state(device, "3.0.0", 30, last_seq=0)

    rollout = phased(version="2.0.0")
    evaluate(rollout)

    (row,) = rows(rollout)
    assert (row.state, row.last_code) == ("skipped", "downgrade_refused")
    assert desired_entry(device) is None
