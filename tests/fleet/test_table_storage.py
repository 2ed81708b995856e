"""The busiest rewritten tables keep room on their pages (PostgreSQL fill factor 50):
fleet_device, so a report updates a device's row in place, and fleet_desiredstate, so a
new envelope and its publication stay on the row's page instead of growing the table.

The figures of heap-only updates are marked `storage` and run alone (.ci/run): pruning waits
for the oldest snapshot of any database on the server, so other test workers' databases
delay it. What makes those updates possible, that no column the hot writes set is indexed,
is checked on every run."""

import re
from pathlib import Path
from typing import Any

import pytest
from bridge_harness import make_device, state_payload, wait_until
from director_factories import ArtifactFactory, own_director_key
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from service_check import require_postgresql

from device_agent.protocol.messages import ReportedState, loads_json
from fleet.director import ModelAssignment, desired_states_mark_published, devices_desired_set
from fleet.models import DesiredState
from fleet.reports import devices_seen_record, devices_state_record
from ota.models import Artifact

pytestmark = pytest.mark.django_db


def _postgresql() -> None:
    require_postgresql(connection.vendor)  # a PostgreSQL storage parameter


@pytest.mark.parametrize("table", ["fleet_device", "fleet_desiredstate"])
def test_the_table_leaves_room_for_new_row_versions(table: str) -> None:
    _postgresql()
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [table])
        (options,) = cursor.fetchone()
    assert "fillfactor=50" in options


def _snapshot_holders() -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, state, application_name, left(query, 80) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)"
        )
        return cursor.fetchall()


def _no_older_snapshot() -> None:
    """A row version is pruned, and its room reused by a heap-only update, only once no
    snapshot can see it: wait until no other session of this database holds one (a process
    an earlier test left finishing its work would make these figures its own)."""
    assert wait_until(lambda: not _snapshot_holders(), timeout=60), _snapshot_holders()


def _updates(table: str = "fleet_device") -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # this session's counts, now
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s",
            [table],
        )
        updated, hot = cursor.fetchone()
    return updated, hot


@pytest.mark.storage
@pytest.mark.django_db(transaction=True)
def test_reports_update_devices_without_new_index_entries() -> None:
    _postgresql()
    # given 200 freshly enrolled devices
    devices = [make_device(f"dev-{i:03d}") for i in range(200)]
    state = ReportedState.from_dict(loads_json(state_payload(last_seq=5)))
    _no_older_snapshot()
    before = _updates()
    # when each reports its state and is seen, three times, a transaction each (as the
    # bridge writes its batches)
    for _ in range(3):
        devices_state_record(reports=[(d, state) for d in devices])
        devices_seen_record(device_pks=[d.pk for d in devices], at=devices[0].enrolled_at)
    # then PostgreSQL updated most rows in place: heap-only tuples, no index entry. At
    # the default fill factor 67 of these 1 200 are, and none if a column they write were
    # indexed; at 50 over 80 % on a quiet machine, fewer when a loaded one delays the
    # pruning that frees the room (670 seen), so the bound sits between the two
    after = _updates()
    updated, hot = after[0] - before[0], after[1] - before[1]
    assert updated == 1200
    assert hot >= 0.5 * updated, (updated, hot, _snapshot_holders())


def _pages(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int", [table])
        (pages,) = cursor.fetchone()
    return int(pages)


class _PublishedFleet:
    """200 devices whose desired state the director signed and the outbox marked published,
    and two more versions to sign them."""

    def __init__(self) -> None:
        self.devices = [make_device(f"dev-{i:03d}") for i in range(200)]
        versions = [
            ArtifactFactory.create(version=f"1.{n}.0", release_counter=n + 1) for n in range(3)
        ]
        self.issue_and_publish(versions[0])
        self.versions = versions[1:]

    def issue_and_publish(self, artifact: Artifact) -> None:
        result = devices_desired_set(
            devices=self.devices, assignments_for=lambda _: [ModelAssignment(artifact=artifact)]
        )
        assert result.issued == 200
        published = list(DesiredState.objects.values_list("pk", "seq"))
        assert desired_states_mark_published(published=published, at=timezone.now()) == 200


@pytest.fixture
def published_fleet(settings: Any, tmp_path: Path) -> _PublishedFleet:
    _postgresql()
    own_director_key(settings, tmp_path)
    return _PublishedFleet()


@pytest.mark.storage
@pytest.mark.django_db(transaction=True)
def test_new_desired_states_and_their_publication_do_not_grow_the_table(
    published_fleet: _PublishedFleet,
) -> None:
    # given 200 devices with a desired state, published
    _no_older_snapshot()
    before = _pages("fleet_desiredstate")
    # when the director signs them a new version twice, and the outbox marks each published
    for artifact in published_fleet.versions:
        published_fleet.issue_and_publish(artifact)
    # then the new row versions went on the rows' own pages: four writes of every row, and
    # the table did not grow (at the default fill factor of 100: from 102 pages to 298)
    after = _pages("fleet_desiredstate")
    assert after <= before * 1.1, (before, after)


def test_a_devices_events_are_found_through_an_index_without_one_of_their_own() -> None:
    _postgresql()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'fleet_deviceevent' "
            "AND indexdef NOT LIKE '%(id)'"
        )
        indexes = [row[0] for row in cursor.fetchall()]
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN SELECT id FROM fleet_deviceevent WHERE device_id = ANY('{1,2}')")
        plan = " ".join(row[0] for row in cursor.fetchall())
    # every index of every event leads with the device; none is on the device alone (an
    # entry more for every event stored, and nothing it would find faster); the third is
    # the partial unique index that stores an agent's event once, the fourth the partial
    # index on the time of failures only (the dashboard's), which ordinary events skip
    assert len(indexes) == 4, indexes
    assert sum("UNIQUE" in index and "WHERE" in index for index in indexes) == 1, indexes
    failures = [index for index in indexes if "(received_at)" in index]
    assert len(failures) == 1, indexes
    assert "WHERE" in failures[0], indexes
    assert "'failed'" in failures[0], indexes
    assert all("(device_id," in index for index in indexes if index not in failures), indexes
    # and a device's events (tracking's read, a device's deletion) still use one of them
    assert "Index Scan" in plan or "Bitmap Index Scan" in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.storage
@pytest.mark.django_db(transaction=True)
def test_the_director_and_the_outbox_rewrite_desired_states_without_new_index_entries(
    published_fleet: _PublishedFleet,
) -> None:
    # given 200 devices with a desired state, published
    _no_older_snapshot()
    before = _updates("fleet_desiredstate")
    # when the director signs them a new version twice, and the outbox marks each published
    for artifact in published_fleet.versions:
        published_fleet.issue_and_publish(artifact)
    # then nearly every one of the 800 row updates was heap-only: no column either writes
    # is indexed (with the index on expires_at and the partial one on published_seq < seq
    # that the outbox used to scan, none of the director's were)
    after = _updates("fleet_desiredstate")
    updated, hot = after[0] - before[0], after[1] - before[1]
    assert updated == 800
    assert hot >= 0.9 * updated, (updated, hot, _snapshot_holders())


def _indexed_columns(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass",
            [table],
        )
        columns = {row[0] for row in cursor.fetchall()}
        # columns an index reads through an expression or a partial index's predicate
        cursor.execute(
            "SELECT pg_get_expr(indexprs, indrelid), pg_get_expr(indpred, indrelid) "
            "FROM pg_index WHERE indrelid = %s::regclass",
            [table],
        )
        expressions = " ".join(e for row in cursor.fetchall() for e in row if e)
        cursor.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
            [table],
        )
        every = {row[0] for row in cursor.fetchall()}
    return columns | {c for c in every if re.search(rf"\b{c}\b", expressions)}


def _updated_columns(statements: list[str], table: str) -> set[str]:
    """The columns the UPDATE statements of `table` set."""
    columns: set[str] = set()
    for sql in statements:
        found = re.match(
            rf'\s*UPDATE\s+"?{table}"?\s+(?:AS\s+\w+\s+)?SET\s+(.*?)\s+(?:FROM|WHERE)\b',
            sql,
            re.S | re.I,
        )
        if found:
            columns |= set(re.findall(r'"?(\w+)"?\s*=', found.group(1)))
    return columns


def _issue(devices: list[Any], artifact: Artifact) -> None:
    devices_desired_set(
        devices=devices, assignments_for=lambda _: [ModelAssignment(artifact=artifact)]
    )


@pytest.mark.django_db(transaction=True)
def test_the_hot_writes_set_no_indexed_column(settings: Any, tmp_path: Path) -> None:
    _postgresql()
    own_director_key(settings, tmp_path)
    devices = [make_device(f"dev-{i:03d}") for i in range(20)]
    state = ReportedState.from_dict(loads_json(state_payload(last_seq=5)))
    versions = [ArtifactFactory.create(version=f"1.{n}.0", release_counter=n + 1) for n in range(2)]
    with CaptureQueriesContext(connection) as captured:
        devices_state_record(reports=[(d, state) for d in devices])
        devices_seen_record(device_pks=[d.pk for d in devices], at=devices[0].enrolled_at)
        for artifact in versions:
            _issue(devices, artifact)
            published = list(DesiredState.objects.values_list("pk", "seq"))
            desired_states_mark_published(published=published, at=timezone.now())
    statements = [q["sql"] for q in captured.captured_queries]
    for table in ("fleet_device", "fleet_desiredstate"):
        written = _updated_columns(statements, table)
        # the check sees the writes it judges
        assert written, (table, [s for s in statements if "UPDATE" in s.upper()])
        assert not written & _indexed_columns(table), (table, written & _indexed_columns(table))
