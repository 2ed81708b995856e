"""filter_in: one array parameter on PostgreSQL, ``__in`` elsewhere; same rows either way."""

import pytest
from bridge_harness import make_device

from fleet.bulk import filter_in
from fleet.models import Device

pytestmark = [pytest.mark.django_db, pytest.mark.db_both]


def test_it_selects_by_pks_by_text_and_nothing_for_an_empty_list() -> None:
    ids = ["dev-1", "dev.2", "DEV_3", "d4"]
    devices = {device_id: make_device(device_id) for device_id in ids}
    by_pk = filter_in(Device.objects.all(), "pk", [devices["dev-1"].pk, devices["d4"].pk])
    assert sorted(d.device_id for d in by_pk) == ["d4", "dev-1"]
    by_id = filter_in(Device.objects.all(), "device_id", ["dev.2", "DEV_3", "missing"])
    assert sorted(by_id.values_list("device_id", flat=True)) == ["DEV_3", "dev.2"]
    # text that would need quoting in an array literal is matched as is, never as SQL
    odd = filter_in(Device.objects.all(), "device_id", ['a"b', "c,d", "{e}", "'; DROP"])
    assert list(odd) == []
    assert list(filter_in(Device.objects.all(), "device_id", [])) == []
    assert filter_in(Device.objects.all(), "pk", []).update(hardware="x") == 0
    assert Device.objects.count() == 4
