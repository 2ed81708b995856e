"""Writes for what devices report over MQTT (DESIGN.md §3): state, events, presence.

The bridge validates every message with `device_agent.protocol` before it calls one of
these; they trust their typed arguments. Each is idempotent, because the bridge
acknowledges a QoS 1 message only after its write commits, so a crash in between
means the broker delivers the same message again.
"""

import hashlib
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, cast

from django.db import connection
from django.db.models import Field

from device_agent.protocol.messages import ReportedState, UpdateEvent
from fleet.models import Device, DeviceEvent
from ota.tasks import rollout_evaluate_on_commit

_EVENT_FIELDS = ("seq", "rollout_id", "model", "phase", "progress", "code", "detail", "ts")
_STATE_FIELDS = ("reported", "agent_version", "reported_seq")
EVENT_CHUNK = 500  # events per INSERT (11 parameters each; SQLite allows 32 766)


def _field(model: type[Device] | type[DeviceEvent], name: str) -> Field[Any, Any]:
    return cast(Field[Any, Any], model._meta.get_field(name))  # a concrete field, not a relation


def _column(model: type[Device] | type[DeviceEvent], name: str) -> str:
    return connection.ops.quote_name(str(_field(model, name).column))


def _clip(model: type[Device] | type[DeviceEvent], field: str, value: str) -> str:
    # The protocol allows more than some columns hold (agent_version 64 vs 32, detail 1024
    # vs 500): keep what fits rather than lose the report.
    max_length = getattr(model._meta.get_field(field), "max_length", None)
    return value[:max_length] if max_length else value


def device_state_record(*, device: Device, state: ReportedState) -> Device:
    """Store the device's retained `state` report: what it runs and the last desired seq.

    The latest report wins: a device's messages reach the bridge in the order it sent them.
    """
    _apply_state(device, state)
    device.save(update_fields=list(_STATE_FIELDS))
    return device


def _apply_state(device: Device, state: ReportedState) -> None:
    device.reported = state.to_dict()
    device.agent_version = _clip(Device, "agent_version", state.agent_version)
    device.reported_seq = state.last_seq


def devices_state_record(*, reports: Sequence[tuple[Device, ReportedState]]) -> None:
    """``device_state_record`` for many devices in one statement batch (the bridge's).

    A device listed more than once keeps its last report, as one by one. On PostgreSQL
    psycopg sends the executemany as one pipeline: no round trip per device.
    """
    latest = {device.pk: (device, state) for device, state in reports}
    if not latest:
        return
    params = []
    prep_reported = _field(Device, "reported").get_db_prep_save
    for device, state in latest.values():
        _apply_state(device, state)
        params.append(
            (
                prep_reported(device.reported, connection),
                device.agent_version,
                device.reported_seq,
                device.pk,
            )
        )
    qn = connection.ops.quote_name
    meta = Device._meta
    columns = [_column(Device, name) for name in _STATE_FIELDS]
    assignments = ", ".join(f"{column} = %s" for column in columns)
    # Only quoted identifiers from the model's metadata are formatted into the SQL.
    sql = f"UPDATE {qn(meta.db_table)} SET {assignments} WHERE {qn(str(meta.pk.column))} = %s"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _event_row(device: Device, event: UpdateEvent) -> DeviceEvent:
    return DeviceEvent(
        device=device,
        digest=hashlib.sha256(event.to_json()).hexdigest(),
        seq=event.seq,
        rollout_id=event.rollout_id or "",
        model=event.model or "",
        phase=event.phase.value,
        progress=event.progress,
        code=event.code.value if event.code else "",
        detail=_clip(DeviceEvent, "detail", event.detail),
        ts=event.ts,
    )


def devices_event_record(*, reports: Sequence[tuple[Device, UpdateEvent]]) -> list[bool]:
    """``device_event_record`` for many events at once: whether each was stored (False for a
    redelivery, or a repeat earlier in ``reports``).

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` per ``EVENT_CHUNK`` events where one
    by one took a round trip each (docs/benchmarks.md, "Rollouts"). Without RETURNING
    support, one by one.
    """
    rows = [_event_row(device, event) for device, event in reports]
    if not connection.features.can_return_rows_from_bulk_insert:
        return [_insert_unless_stored(row) for row in rows]
    first: dict[tuple[int, str], int] = {}
    for index, row in enumerate(rows):
        first.setdefault((row.device_id, row.digest), index)
    unique = sorted(first.values())
    stored: set[tuple[int, str]] = set()
    for start in range(0, len(unique), EVENT_CHUNK):
        stored |= _insert_many([rows[i] for i in unique[start : start + EVENT_CHUNK]])
    created = [
        first[(row.device_id, row.digest)] == index and (row.device_id, row.digest) in stored
        for index, row in enumerate(rows)
    ]
    for row, new in zip(rows, created, strict=True):
        if new and row.rollout_id:
            rollout_evaluate_on_commit(rollout_id=row.rollout_id, phase=row.phase)
    return created


def _insert_many(rows: list[DeviceEvent]) -> set[tuple[int, str]]:
    """INSERT the events not stored yet; the (device, digest) of those it inserted."""
    meta = DeviceEvent._meta
    fields = [f for f in meta.concrete_fields if f is not meta.pk]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(str(f.column)) for f in fields)
    prepared = [
        [f.get_db_prep_save(f.pre_save(row, add=True), connection) for f in fields] for row in rows
    ]
    device, digest = _column(DeviceEvent, "device"), _column(DeviceEvent, "digest")
    params: list[Any]
    if connection.vendor == "postgresql":
        # One array per column: a statement of a dozen parameters, where VALUES lists
        # take psycopg longer to bind than the database to run (thousands of them).
        arrays = ", ".join(f"%s::{f.db_type(connection)}[]" for f in fields)
        values = f"SELECT * FROM unnest({arrays})"  # noqa: S608
        params = [list(column) for column in zip(*prepared, strict=True)]
    else:
        placeholders = f"({', '.join(['%s'] * len(fields))})"
        values = f"VALUES {', '.join([placeholders] * len(rows))}"
        params = [value for row in prepared for value in row]
    # Only quoted identifiers and types from the model's metadata are formatted into the SQL.
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(meta.db_table)} ({columns}) {values} "  # noqa: S608
            f"ON CONFLICT ({device}, {digest}) DO NOTHING RETURNING {device}, {digest}",
            params,
        )
        return {(int(pk), str(text)) for pk, text in cursor.fetchall()}



def device_event_record(*, device: Device, event: UpdateEvent) -> tuple[DeviceEvent, bool]:
    """Store one update-progress event; `(event, created)`, created False for a redelivery.

    An event repeated field for field is the same report delivered twice (the broker
    redelivers what the bridge had not acknowledged), so it is stored once.
    """
    stored = _event_row(device, event)
    created = _insert_unless_stored(stored)
    if not created:
        stored = DeviceEvent.objects.get(device=device, digest=stored.digest)
    if created and stored.rollout_id:
        # The rollout engine tracks outcomes from these rows: let it look once they commit.
        rollout_evaluate_on_commit(rollout_id=stored.rollout_id, phase=stored.phase)
    return stored, created


def _insert_unless_stored(event: DeviceEvent) -> bool:
    """INSERT the event unless one with its (device, digest) exists; whether it did.

    One statement (``ON CONFLICT DO NOTHING RETURNING``) where ``get_or_create`` takes four
    round trips (SELECT, SAVEPOINT, INSERT, RELEASE) for every new event, the common case:
    in the rollout benchmark that was half of the bridge's time (docs/benchmarks.md).
    """
    if not connection.features.can_return_rows_from_bulk_insert:
        found, created = DeviceEvent.objects.get_or_create(
            device=event.device,
            digest=event.digest,
            defaults={name: getattr(event, name) for name in _EVENT_FIELDS},
        )
        event.pk, event.received_at = found.pk, found.received_at
        event._state.adding = False
        return created
    meta = DeviceEvent._meta
    fields = [f for f in meta.concrete_fields if f is not meta.pk]
    values = [f.get_db_prep_save(f.pre_save(event, add=True), connection) for f in fields]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(str(f.column)) for f in fields)
    conflict = ", ".join(qn(name) for name in ("device_id", "digest"))
    # Only quoted identifiers from the model's metadata are formatted into the SQL.
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(meta.db_table)} ({columns}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(fields))}) "
            f"ON CONFLICT ({conflict}) DO NOTHING RETURNING {qn(str(meta.pk.column))}",
            values,
        )
        row = cursor.fetchone()
    if row is None:
        return False
    event.pk = row[0]
    event._state.adding = False
    return True


def device_presence_set(*, device: Device, online: bool, at: datetime) -> Device:
    """Mark the device online (seen `at`) or offline, from its retained `status` topic.

    `offline` usually is the device's last will, published by the broker once the device
    is gone, so it does not move `last_seen_at`.
    """
    device.online = online
    update_fields = ["online"]
    if online:
        device.last_seen_at = at
        update_fields.append("last_seen_at")
    device.save(update_fields=update_fields)
    return device


def devices_seen_record(*, device_pks: Collection[int], at: datetime) -> int:
    """Set `last_seen_at` of many devices at once (the bridge batches it); rows updated."""
    if not device_pks:
        return 0
    return Device.objects.filter(pk__in=list(device_pks)).update(last_seen_at=at)
