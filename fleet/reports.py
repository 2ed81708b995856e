"""Writes for what devices report over MQTT (docs/protocol.md): state, events, presence.

The bridge validates every message with `device_agent.protocol` before it calls one of
these; they trust their typed arguments. Each is idempotent, because the bridge
acknowledges a QoS 1 message only after its write commits, so a crash in between
means the broker delivers the same message again.
"""

import hashlib
import json
from collections.abc import Callable, Collection, Sequence
from datetime import datetime

from django.db import connection, transaction

from device_agent.protocol.messages import ReportedState, UpdateEvent
from fleet import hooks
from fleet.bulk import columns_insert_new, columns_update, filter_in
from fleet.models import Device, DeviceEvent

# Each DeviceEvent field stored from an event, and its value: model instances
# (_event_row) and the bulk insert's columns (_insert_new) both use it.
_EVENT_VALUES: tuple[tuple[str, Callable[[UpdateEvent], object]], ...] = (
    ("seq", lambda e: e.seq),
    ("rollout_id", lambda e: e.rollout_id or ""),
    ("model", lambda e: e.model or ""),
    ("phase", lambda e: e.phase.value),
    ("progress", lambda e: e.progress),
    ("code", lambda e: e.code.value if e.code else ""),
    ("detail", lambda e: _clip(DeviceEvent, "detail", e.detail)),
    ("ts", lambda e: e.ts),
    ("event_id", lambda e: e.event_id or ""),
)
_EVENT_FIELDS = tuple(name for name, _ in _EVENT_VALUES)
_STATE_FIELDS = ("reported", "agent_version", "reported_seq")
EVENT_CHUNK = 500  # events per INSERT (12 parameters each; SQLite allows 32 766)


def _clip(model: type[Device] | type[DeviceEvent], field: str, value: str) -> str:
    # The protocol allows more than some columns hold (agent_version 64 vs 32, detail 1024
    # vs 500): keep what fits rather than lose the report.
    max_length = getattr(model._meta.get_field(field), "max_length", None)
    return value[:max_length] if max_length else value


def devices_for_reports(*, device_ids: Collection[str]) -> dict[str, Device]:
    """The enrolled devices of ``device_ids`` (revoked ones included), by device id: the
    rows the bridge hands back to the writes below."""
    if not device_ids:
        return {}
    # A device's reported state is only ever replaced here, never read: not decoding it
    # spares the JSON of every device the bridge reads.
    rows = filter_in(Device.objects.defer("reported"), "device_id", sorted(device_ids))
    return {device.device_id: device for device in rows}


def device_state_record(*, device: Device, state: ReportedState) -> Device:
    """Store the device's retained `state` report: what it runs and the last desired seq.

    The latest report wins: a device's messages reach the bridge in the order it sent them.
    Rollouts it is in flight in get news of it in the same transaction (``fleet.hooks``).
    """
    _apply_state(device, state)
    with transaction.atomic(savepoint=False):
        device.save(update_fields=list(_STATE_FIELDS))
        hooks.device_news([device.pk])
    return device


def _apply_state(device: Device, state: ReportedState) -> None:
    device.reported = state.to_dict()
    device.agent_version = _clip(Device, "agent_version", state.agent_version)
    device.reported_seq = state.last_seq


def devices_state_record(
    *, reports: Sequence[tuple[Device, ReportedState]], news: bool = True
) -> None:
    """``device_state_record`` for many devices in one statement batch (the bridge's).

    A device listed more than once keeps its last report, as one by one. On PostgreSQL
    one statement; elsewhere an executemany. Then one more for the news
    (``fleet.hooks``), unless ``news`` is False: the caller records it, in the same
    transaction (the bridge, once for a batch's states and events).
    """
    latest = {device.pk: (device, state) for device, state in reports}
    if not latest:
        return
    for device, state in latest.values():
        _apply_state(device, state)
    with transaction.atomic(savepoint=False):
        _update_many(list(latest.values()))
        if news:
            hooks.device_news(latest.keys())


def _update_many(reports: Sequence[tuple[Device, ReportedState]]) -> None:
    # The report as JSON text, made jsonb by the database (docs/benchmarks.md, "Rollouts").
    columns_update(
        Device,
        [device.pk for device, _ in reports],
        {
            "reported": [json.dumps(d.reported, separators=(",", ":")) for d, _ in reports],
            "agent_version": [d.agent_version for d, _ in reports],
            "reported_seq": [d.reported_seq for d, _ in reports],
        },
        json_text={"reported"},
        as_is=True,
    )


def _event_row(device: Device, event: UpdateEvent, digest: str | None = None) -> DeviceEvent:
    return DeviceEvent(
        device=device,
        digest=digest or _digest(event),
        **{name: value(event) for name, value in _EVENT_VALUES},
    )


def devices_event_record(
    *, reports: Sequence[tuple[Device, UpdateEvent]], news: bool = True
) -> list[bool]:
    """``device_event_record`` for many events at once: whether each was stored (False for a
    redelivery, or a repeat earlier in ``reports``).

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` per ``EVENT_CHUNK`` events where one
    by one takes a round trip each (docs/benchmarks.md, "Rollouts"). Without RETURNING
    support, one by one. Then one statement for the news of them (``fleet.hooks``), in
    the same transaction, unless ``news`` is False (as ``devices_state_record``).
    """
    if not reports:
        return []
    with transaction.atomic(savepoint=False):
        created = _insert_events(reports)
        if news:
            hooks.device_news([d.pk for (d, _), new in zip(reports, created, strict=True) if new])
    for (_, event), new in zip(reports, created, strict=True):
        if new and event.rollout_id:
            hooks.event_stored(rollout_id=event.rollout_id, phase=event.phase.value)
    return created


def _insert_events(reports: Sequence[tuple[Device, UpdateEvent]]) -> list[bool]:
    if not connection.features.can_return_rows_from_bulk_insert:
        return [_insert_unless_stored(_event_row(device, event)) for device, event in reports]
    keys = [(device.pk, _digest(event)) for device, event in reports]
    first: dict[tuple[int, str], int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    unique = sorted(first.values())
    stored: set[tuple[int, str]] = set()
    for start in range(0, len(unique), EVENT_CHUNK):
        chunk = unique[start : start + EVENT_CHUNK]
        stored |= _insert_new([reports[i] for i in chunk], [keys[i][1] for i in chunk])
    return [first[key] == index and key in stored for index, key in enumerate(keys)]


def _digest(event: UpdateEvent) -> str:
    return hashlib.sha256(event.to_json()).hexdigest()


def _insert_new(
    reports: Sequence[tuple[Device, UpdateEvent]], digests: Sequence[str]
) -> set[tuple[int, str]]:
    """INSERT the events not stored yet; the (device, digest) of those it inserted.

    Values straight from the events: building a model instance per event and preparing
    each of its fields through Django costs more than the insert (docs/benchmarks.md,
    "Rollouts"). No conflict target: a repeat collides on (device, digest) or (device,
    event_id).
    """
    events = [event for _, event in reports]
    stored = columns_insert_new(
        DeviceEvent,
        {
            "device": [device.pk for device, _ in reports],
            **{name: [value(e) for e in events] for name, value in _EVENT_VALUES},
            "digest": list(digests),
        },
        returning=["device", "digest"],
        as_is=True,
    )
    return {(int(pk), str(text)) for pk, text in stored}


def device_event_record(*, device: Device, event: UpdateEvent) -> tuple[DeviceEvent, bool]:
    """Store one update-progress event; `(event, created)`, created False for a redelivery.

    An event repeated field for field is the same report delivered twice (the broker
    redelivers what the bridge had not acknowledged), so it is stored once; so is an
    event whose `event_id` this device already sent (the agent sends it until acked).
    """
    stored = _event_row(device, event)
    with transaction.atomic(savepoint=False):
        created = _insert_unless_stored(stored)
        if created:
            hooks.device_news([device.pk])
    if not created:
        # The digest covers the event_id: an event with one collides on it, if on anything.
        if stored.event_id:
            stored = DeviceEvent.objects.get(device=device, event_id=stored.event_id)
        else:
            stored = DeviceEvent.objects.get(device=device, digest=stored.digest)
    if created and stored.rollout_id:
        # The rollout engine tracks outcomes from these rows: let it look once they commit.
        hooks.event_stored(rollout_id=stored.rollout_id, phase=stored.phase)
    return stored, created


def _insert_unless_stored(event: DeviceEvent) -> bool:
    """INSERT the event unless one with its (device, digest) exists; whether it did.

    One statement (``ON CONFLICT DO NOTHING RETURNING``) where ``get_or_create`` takes four
    round trips (SELECT, SAVEPOINT, INSERT, RELEASE) for every new event, the common case:
    in the rollout benchmark that is a large part of the bridge's time.
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
    # Only quoted identifiers from the model's metadata are formatted into the SQL.
    # No conflict target: a repeat collides on (device, digest) or (device, event_id).
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(meta.db_table)} ({columns}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(fields))}) "
            f"ON CONFLICT DO NOTHING RETURNING {qn(str(meta.pk.column))}",
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


def devices_news_record(*, device_pks: Collection[int]) -> None:
    """Tell the rollouts (``fleet.hooks``) that these devices stored reports or new events,
    in the caller's transaction: the bridge, once for a batch's states and events."""
    hooks.device_news(device_pks)


def devices_seen_record(*, device_pks: Collection[int], at: datetime) -> int:
    """Set `last_seen_at` of many devices at once (the bridge batches it); rows updated."""
    if not device_pks:
        return 0
    # One array parameter: a thousand literals in an IN list cost psycopg more to split
    # client-side than the update itself.
    return filter_in(Device.objects.all(), "pk", sorted(device_pks)).update(last_seen_at=at)
