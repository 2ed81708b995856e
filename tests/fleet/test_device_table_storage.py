"""fleet_device keeps room on its pages, so a report updates a device's row in place."""

import pytest
from bridge_harness import make_device, state_payload
from django.db import connection

from device_agent.protocol.messages import ReportedState, loads_json
from fleet.reports import devices_seen_record, devices_state_record

pytestmark = pytest.mark.django_db


def _postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL storage parameter; run with DATABASE_URL=postgres://...")


def test_the_device_table_leaves_room_for_updates_in_place() -> None:
    _postgresql()
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'fleet_device'")
        (options,) = cursor.fetchone()
    assert "fillfactor=50" in options


def _updates() -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # this session's counts, now
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE relname = 'fleet_device'"
        )
        updated, hot = cursor.fetchone()
    return updated, hot


@pytest.mark.django_db(transaction=True)
def test_reports_update_devices_without_new_index_entries() -> None:
    _postgresql()
    # given 200 freshly enrolled devices
    devices = [make_device(f"dev-{i:03d}") for i in range(200)]
    state = ReportedState.from_dict(loads_json(state_payload(last_seq=5)))
    before = _updates()
    # when each reports its state and is seen, three times, a transaction each (as the
    # bridge writes its batches)
    for _ in range(3):
        devices_state_record(reports=[(d, state) for d in devices])
        devices_seen_record(device_pks=[d.pk for d in devices], at=devices[0].enrolled_at)
    # then PostgreSQL updated most rows in place: heap-only tuples, no index entry (at the
    # default fill factor, 67 of these 1 200)
    after = _updates()
    updated, hot = after[0] - before[0], after[1] - before[1]
    assert updated == 1200
    assert hot >= 0.8 * updated, (updated, hot)
