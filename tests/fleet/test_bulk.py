"""``fleet.bulk``: many rows, each with its own values, in one statement (PostgreSQL) or
one executemany (SQLite) - the same result as saving each row, on both databases, and
every statement seen by Django's execute wrappers and query log."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet.bulk import (
    columns_insert,
    columns_insert_new,
    columns_update,
    columns_upsert,
    delete_returning,
    notify,
    rows_copy,
    rows_update,
)
from fleet.models import DesiredOutbox, DesiredState, Device, DeviceEvent, Tag
from ota.models import RolloutDevice, TrackingNews
from telemetry.ingest import COLUMNS as SAMPLE_COLUMNS
from telemetry.ingest import COPY_TYPES as SAMPLE_TYPES
from telemetry.models import Sample
from tests.fleet.bridge_harness import TS, make_device
from tests.ota.rollout_helpers import artifact, devices, phased, use_own_director_key

pytestmark = pytest.mark.db_both


@pytest.fixture
def rollout_rows(settings, tmp_path, db):
    use_own_director_key(settings, tmp_path)
    artifact("1.0.0")
    artifact("2.0.0")
    devices(6)
    rollout = phased(policy={"rate_per_minute": 1})
    return list(RolloutDevice.objects.filter(rollout=rollout).order_by("pk"))


def test_each_row_gets_its_own_values_and_updated_at_moves(rollout_rows):
    # given rows whose fields change differently, None and "" included
    before = {r.pk: r.updated_at for r in RolloutDevice.objects.all()}
    now = timezone.now()
    changed = rollout_rows[:4]
    for i, row in enumerate(changed):
        row.state = "notified" if i % 2 else "failed"
        row.attempts = i
        row.desired_seq = 100 + i
        row.notified_at = now - timedelta(seconds=i) if i else None
        row.last_code = "" if i else "hash_mismatch"
        row.previous_artifact_id = None
    # when they are written in one call
    fields = ["state", "attempts", "desired_seq", "notified_at", "last_code", "previous_artifact"]
    assert rows_update(changed, fields) == 4
    # then the database holds exactly those values, the others are untouched
    stored = {r.pk: r for r in RolloutDevice.objects.all()}
    for i, row in enumerate(changed):
        got = stored[row.pk]
        assert (got.state, got.attempts, got.desired_seq, got.last_code) == (
            row.state,
            i,
            100 + i,
            row.last_code,
        )
        assert got.notified_at == row.notified_at
        assert got.updated_at > before[row.pk]
    for row in rollout_rows[4:]:
        assert stored[row.pk].state == "pending"
        assert stored[row.pk].updated_at == before[row.pk]


def test_columns_by_field_name_and_refusals(rollout_rows):
    pks = [r.pk for r in rollout_rows[:2]]
    assert columns_update(RolloutDevice, pks, {"last_phase": ["accepted", "committed"]}) == 2
    assert list(
        RolloutDevice.objects.filter(pk__in=pks).order_by("pk").values_list("last_phase", flat=True)
    ) == ["accepted", "committed"]
    assert columns_update(RolloutDevice, [], {"last_phase": []}) == 0
    with pytest.raises(ValueError, match="2 rows"):
        columns_update(RolloutDevice, pks, {"last_phase": ["accepted"]})
    with pytest.raises(ValueError, match="concrete, non-key fields"):
        columns_update(RolloutDevice, pks, {"id": [1, 2]})


def test_inserted_rows_hold_their_values_and_the_others_defaults_as_create_gives(rollout_rows):
    # given rows made by create() (the start's removed first), remembered and removed
    rollout = rollout_rows[0].rollout
    RolloutDevice.objects.filter(rollout=rollout).delete()
    made = [
        RolloutDevice.objects.create(
            rollout=rollout,
            device=row.device,
            arm=row.arm,
            bucket=row.bucket,
            artifact=row.artifact if i < 2 else None,
            state=row.state if i < 2 else "skipped",
            last_code="hw_mismatch" if i == 2 else "",
        )
        for i, row in enumerate(rollout_rows[:3])
    ]
    expected = {r.device_id: r for r in RolloutDevice.objects.filter(rollout=rollout)}
    RolloutDevice.objects.filter(rollout=rollout).delete()
    started = timezone.now()
    # when columns_insert makes them from their columns alone
    count = columns_insert(
        RolloutDevice,
        {
            "rollout": [rollout.pk] * 3,
            "device": [m.device_id for m in made],
            "arm": [m.arm for m in made],
            "bucket": [m.bucket for m in made],
            "artifact": [m.artifact_id for m in made],
            "state": [m.state for m in made],
            "last_code": [m.last_code for m in made],
        },
    )
    # then each row holds what create() stored: its values, the defaults, now for updated_at
    assert count == 3
    got = {r.device_id: r for r in RolloutDevice.objects.filter(rollout=rollout)}
    assert set(got) == set(expected)
    ignored = {"id", "updated_at"}
    names = [f.attname for f in RolloutDevice._meta.concrete_fields if f.name not in ignored]
    for device_id, row in got.items():
        assert {n: getattr(row, n) for n in names} == {
            n: getattr(expected[device_id], n) for n in names
        }
        assert row.updated_at >= started
    assert columns_insert(RolloutDevice, {"arm": []}) == 0
    with pytest.raises(ValueError, match="different lengths"):
        columns_insert(RolloutDevice, {"arm": ["a"], "bucket": [0.1, 0.2]})


# --- fleet models: JSON given as text, inserts that skip or update, the statements seen ---


@pytest.fixture
def two_devices(db):
    return [make_device("bulk-1"), make_device("bulk-2")]


def _event_columns(devices, digests):
    n = len(digests)
    return {
        "device": [d.pk for d in devices],
        "seq": list(range(1, n + 1)),
        "phase": ["downloading"] * n,
        "ts": [TS] * n,
        "digest": list(digests),
    }


def test_json_text_is_stored_as_json_and_rows_take_their_own_values(two_devices):
    a, b = two_devices
    # given the reports as JSON text, in an order other than the primary key's
    written = columns_update(
        Device,
        [b.pk, a.pk],
        {"reported": ['{"b":[1,2]}', '{"a":"x"}'], "reported_seq": [7, 3]},
        json_text={"reported"},
    )
    # then each row holds its own, read back as JSON (not as a string)
    assert written == 2
    got = {d.pk: (d.reported, d.reported_seq) for d in Device.objects.all()}
    assert got == {a.pk: ({"a": "x"}, 3), b.pk: ({"b": [1, 2]}, 7)}
    assert Device.objects.filter(reported__b__1=2).get() == b


def test_insert_new_skips_stored_rows_and_returns_the_inserted(two_devices):
    a, b = two_devices
    first = columns_insert_new(
        DeviceEvent, _event_columns([a, b], ["d1", "d2"]), returning=["device", "digest"]
    )
    assert sorted(first) == sorted([(a.pk, "d1"), (b.pk, "d2")])
    # a repeat of a's (device, digest) is skipped, b's new digest inserted
    again = columns_insert_new(
        DeviceEvent, _event_columns([a, b], ["d1", "d3"]), returning=["device", "digest"]
    )
    assert again == [(b.pk, "d3")]
    assert DeviceEvent.objects.count() == 3
    assert DeviceEvent.objects.get(digest="d3").received_at is not None


def test_upsert_inserts_new_rows_and_updates_colliding_ones(two_devices):
    a, b = two_devices
    desired = [DesiredState.objects.create(device=d) for d in (a, b)]
    DesiredOutbox.objects.create(desired=desired[0], seq=1)
    written = columns_upsert(
        DesiredOutbox,
        {"desired": [r.pk for r in desired], "seq": [5, 6]},
        unique="desired",
        update=["seq"],
    )
    assert written == 2
    assert dict(DesiredOutbox.objects.values_list("desired_id", "seq")) == {
        desired[0].pk: 5,
        desired[1].pk: 6,
    }


def test_execute_wrappers_and_the_query_log_see_every_statement(two_devices):
    a, b = two_devices
    desired = DesiredState.objects.create(device=a)
    seen: list[tuple[str, bool]] = []

    def wrapper(execute, sql, params, many, context):
        seen.append((sql, many))
        return execute(sql, params, many, context)

    writes = [
        ("UPDATE", lambda: columns_update(Device, [a.pk], {"agent_version": ["1.2.3"]})),
        ("UPDATE", lambda: rows_update([b], ["agent_version"])),
        ("INSERT", lambda: columns_insert(Tag, {"name": ["t1", "t2"]})),
        (
            "INSERT",
            lambda: columns_insert_new(
                DeviceEvent, _event_columns([a], ["w1"]), returning=["digest"]
            ),
        ),
        (
            "INSERT",
            lambda: columns_upsert(
                DesiredOutbox,
                {"desired": [desired.pk], "seq": [2]},
                unique="desired",
                update=["seq"],
            ),
        ),
    ]
    for verb, write in writes:
        seen.clear()
        with connection.execute_wrapper(wrapper), CaptureQueriesContext(connection) as logged:
            write()
        # one statement each, seen by the wrapper and logged with its SQL
        assert [sql.split()[0] for sql, _ in seen] == [verb], seen
        assert len(logged.captured_queries) == 1
        assert verb in logged.captured_queries[0]["sql"]  # ("1 times: ..." for executemany)
    seen.clear()
    with connection.execute_wrapper(wrapper):
        notify("fleet_bulk_test")
    # NOTIFY where there is one (PostgreSQL), nothing elsewhere
    assert len(seen) == (1 if connection.vendor == "postgresql" else 0)
    assert Device.objects.get(pk=a.pk).agent_version == "1.2.3"
    assert set(Tag.objects.values_list("name", flat=True)) >= {"t1", "t2"}


def test_a_failed_bulk_write_raises_django_s_error_and_writes_nothing(two_devices):
    a, _ = two_devices
    columns_insert_new(DeviceEvent, _event_columns([a], ["x1"]), returning=["digest"])
    # the same (device, digest) twice: the unique constraint refuses it, as Django's error
    with pytest.raises(IntegrityError), transaction.atomic():
        columns_insert(DeviceEvent, _event_columns([a, a], ["x2", "x2"]))
    assert list(DeviceEvent.objects.values_list("digest", flat=True)) == ["x1"]


def test_rows_copy_appends_rows_and_delete_returning_takes_them(two_devices):
    a, b = two_devices
    # telemetry rows as tuples: the binary COPY on PostgreSQL, an executemany elsewhere
    rows = [
        (a.pk, TS, "kws", "1.0.0", "", "", "latency_ms", 12.5),
        (b.pk, TS, "kws", "1.0.0", "r-1", "main", "latency_ms", 13.0),
    ]
    rows_copy(Sample, SAMPLE_COLUMNS, SAMPLE_TYPES, rows)
    assert sorted(Sample.objects.values_list("device_id", "ts", "arm", "value")) == sorted(
        [(a.pk, TS, "", 12.5), (b.pk, TS, "main", 13.0)]
    )
    # news of two rollouts: one rollout's are taken (deleted and returned), the other's stay
    TrackingNews.objects.bulk_create(
        [TrackingNews(rollout_id=1, device_id=a.pk), TrackingNews(rollout_id=1, device_id=b.pk)]
        + [TrackingNews(rollout_id=2, device_id=a.pk)]
    )
    seen: list[str] = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        taken = delete_returning(TrackingNews, where={"rollout_id": 1}, returning="device_id")
    assert sorted(taken) == sorted([a.pk, b.pk])
    assert list(TrackingNews.objects.values_list("rollout_id", "device_id")) == [(2, a.pk)]
    assert len(seen) == 1
    assert seen[0].startswith("DELETE")
    assert delete_returning(TrackingNews, where={"rollout_id": 1}, returning="device_id") == []
