"""The director (docs/architecture.md): each device's signed desired state, in its outbox row.

Every change locks the device's ``DesiredState`` row, takes the next ``seq``, signs the
payload with the director key (DSSE, ECDSA P-256) and saves row and envelope, and queues
the row in ``DesiredOutbox``, in one transaction. Nothing here talks to MQTT: the bridge
publishes, retained at QoS 1, every queued row once the transaction has committed.

The payload is built through the protocol dataclasses, so anything a device would
refuse to parse (a version that is not semver, an odd target path, too many models) is
refused here with a ``ServiceError`` carrying the same code, before anything is written.
"""

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.fields.json import KT
from django.utils import timezone

from device_agent.protocol.envelope import sign_envelope
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError, brief
from device_agent.protocol.messages import DesiredState as DesiredPayload
from device_agent.protocol.messages import ModelTarget, parse_timestamp
from fleet.bulk import columns_update, columns_upsert, filter_in, notify
from fleet.errors import ServiceError
from fleet.keys import director_private_key
from fleet.models import DesiredOutbox, DesiredState, Device

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(days=7)
# Rows locked and written per transaction by the bulk paths: bounded lock time and
# statement size, large enough that round trips do not dominate.
BATCH_SIZE = 1000
FIRST_BATCH = 125  # the first and last batches of devices_desired_set (see _batch_sizes)
ISSUE_FIELDS = ["seq", "payload", "envelope", "issued_at", "expires_at"]
# PostgreSQL NOTIFY channel: every transaction that leaves outbox rows behind notifies it
# (delivered on commit, dropped on rollback), so a listening bridge publishes at once
# instead of at its next poll (fleet/bridge/outbox.py, OutboxListener).
OUTBOX_CHANNEL = "fleet_desired_outbox"
_UPDATE_CHUNK = 5000  # pks per UPDATE of the bridge's acknowledgements (one array parameter)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class Artifact(Protocol):
    """What the director reads of a published artifact (``ota.models.Artifact``, above
    the registry: docs/architecture.md)."""

    @property
    def pk(self) -> Any: ...
    @property
    def model_id(self) -> int: ...
    @property
    def model(self) -> _Named: ...
    @property
    def target_path(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def release_counter(self) -> int: ...
    @property
    def hardware(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def length(self) -> int: ...


@dataclass(frozen=True)
class ModelAssignment:
    """One model a device should run: a published artifact, from a rollout arm or not."""

    artifact: Artifact
    rollout_id: str | None = None
    arm: str | None = None


@dataclass(frozen=True)
class DesiredSetResult:
    """What a bulk change did: how many devices got a new envelope, and who was refused."""

    issued: int = 0
    refused: dict[str, ServiceError] = field(default_factory=dict)


def desired_ttl() -> timedelta:
    """How long a signed desired state stays valid (``FLEET_DESIRED_TTL``, default 7 days)."""
    ttl: timedelta = getattr(settings, "FLEET_DESIRED_TTL", DEFAULT_TTL)
    return ttl


# --- building and signing ------------------------------------------------------------


@dataclass(frozen=True)
class _DeviceFacts:
    """The device columns the director decides on, read inside the transaction."""

    pk: int
    device_id: str
    hardware: str
    revoked: bool
    reported_seq: int


def _facts(pks: Iterable[int]) -> dict[int, _DeviceFacts]:
    rows = filter_in(Device.objects.all(), "pk", list(pks)).values_list(
        "pk", "device_id", "hardware", "revoked_at", "reported_seq"
    )
    return {
        pk: _DeviceFacts(pk, device_id, hardware, revoked_at is not None, reported_seq)
        for pk, device_id, hardware, revoked_at, reported_seq in rows
    }


def _target_url(artifact: Artifact) -> str:
    # The consistent-snapshot name ota/tuf_views.py serves: <dir>/<sha256>.<filename>.
    # Valid paths need no quoting ("+" of semver build metadata is literal in a path);
    # quoting keeps an odd path from making an odd URL, so ModelTarget's path check is
    # the one that refuses it (invalid_target_path).
    directory, _, filename = artifact.target_path.rpartition("/")
    path = quote(f"{directory}/{artifact.sha256}.{filename}", safe="/+")
    return f"{settings.FLEET_PUBLIC_URL}/tuf/targets/{path}"


def _target(assignment: ModelAssignment) -> ModelTarget:
    artifact = assignment.artifact
    try:
        return ModelTarget(
            name=artifact.model.name,
            path=artifact.target_path,
            version=artifact.version,
            release_counter=artifact.release_counter,
            hardware=artifact.hardware,
            sha256=artifact.sha256,
            length=artifact.length,
            url=_target_url(artifact),
            rollout_id=assignment.rollout_id,
            arm=assignment.arm,
        )
    except ProtocolError as exc:
        raise ServiceError(
            exc.code,
            f"artifact {artifact.pk} ({brief(artifact.target_path)}) cannot be sent to "
            f"devices: {exc.detail}",
        ) from None


_TargetCache = dict[tuple[int, str | None, str | None], ModelTarget]


def _targets(
    assignments: Sequence[ModelAssignment], facts: _DeviceFacts, cache: _TargetCache
) -> list[ModelTarget]:
    """Check the assignments against the device and build their entries (cached per call)."""
    if facts.revoked:
        raise ServiceError(ErrorCode.FORBIDDEN, f"device {facts.device_id} is revoked")
    seen: set[int] = set()
    for assignment in assignments:
        artifact = assignment.artifact
        if artifact.model_id in seen:
            raise ServiceError(
                ErrorCode.MALFORMED,
                f"model {artifact.model.name!r} is assigned twice to {facts.device_id}",
            )
        seen.add(artifact.model_id)
        if artifact.hardware != facts.hardware:
            raise ServiceError(
                ErrorCode.HW_MISMATCH,
                f"{artifact} is built for {artifact.hardware}, "
                f"device {facts.device_id} is {facts.hardware}",
            )
    targets = []
    for assignment in assignments:
        key = (assignment.artifact.pk, assignment.rollout_id, assignment.arm)
        if key not in cache:
            cache[key] = _target(assignment)
        targets.append(cache[key])
    return targets


@dataclass(slots=True)
class _Locked:
    """An outbox row locked by a bulk call: the columns read, then those ``_issue`` writes.

    Plain values rather than ``DesiredState`` instances: building a model instance (and
    sending its init signals) per row costs more than the row's share of the queries.
    """

    pk: int
    device_id: int
    seq: int
    # The stored payload's "models" and "expires_at" members as text, not the payload:
    # the models of a rollout's rows are the same text, parsed once per call (_ParseCache),
    # where decoding each row's whole payload cost as much as signing it.
    models_json: str | None
    expires_text: str | None
    payload_json: str = ""  # the new payload as signed, written as is to the column
    envelope: bytes = b""
    issued_at: datetime | None = None
    expires_at: datetime | None = None


_ParseCache = dict[object, ModelTarget]
_ModelsCache = dict[str, list[ModelTarget]]


def _locked_models(row: _Locked, cache: _ModelsCache) -> list[ModelTarget]:
    """``_current_models`` of a locked row, from its models' text (parsed once per text)."""
    if row.seq == 0:
        return []
    text = row.models_json
    if text is None:
        raise ServiceError(ErrorCode.MALFORMED, f"stored desired state {row.pk} has no models")
    found = cache.get(text)
    if found is None:
        try:
            models = json.loads(text)
        except ValueError:
            models = None
        found = _parsed_models(row.pk, models, {})
        if len(cache) < 64:  # a call sees a handful of distinct model lists
            cache[text] = found
    return list(found)


def _current_models(row: DesiredState, cache: _ParseCache | None = None) -> list[ModelTarget]:
    """The models of the row's last envelope (validated again: the column is just JSON)."""
    if row.seq == 0 or not row.payload:
        return []
    models = row.payload.get("models") if isinstance(row.payload, dict) else None
    return _parsed_models(row.pk, models, {} if cache is None else cache)


def _parsed_models(pk: int, models: object, cache: _ParseCache) -> list[ModelTarget]:
    if not isinstance(models, list):
        raise ServiceError(ErrorCode.MALFORMED, f"stored desired state {pk} has no models")
    targets = []
    try:
        for entry in models:
            # A rollout puts the same entry on thousands of rows: parse each shape once.
            key = tuple(entry.items()) if isinstance(entry, dict) else None
            if key is None or key not in cache:
                parsed = ModelTarget.from_dict(entry)
                if key is None:
                    targets.append(parsed)
                    continue
                cache[key] = parsed
            targets.append(cache[key])
    except (ProtocolError, TypeError) as exc:  # TypeError: an unhashable value in an entry
        raise ServiceError(
            ErrorCode.MALFORMED, f"stored desired state {pk} is unreadable: {exc}"
        ) from None
    return targets


def _merged(current: list[ModelTarget], new: list[ModelTarget]) -> tuple[ModelTarget, ...]:
    # One entry per model name; models not assigned now keep their entry and position.
    by_name = {target.name: target for target in new}
    merged = [by_name.pop(target.name, target) for target in current]
    return (*merged, *by_name.values())


def _issue(
    row: DesiredState | _Locked,
    facts: _DeviceFacts,
    models: tuple[ModelTarget, ...],
    *,
    now: datetime,
    key: ec.EllipticCurvePrivateKey,
) -> str:
    """Sign the next envelope for ``models`` into ``row`` (the caller holds its lock and saves).

    Returns the payload's JSON as signed (the bulk paths write it to the column as is).
    """
    # Above what the device says it last accepted too: after a database restore the
    # row's seq is behind the device's, which would refuse everything as a replay.
    seq = max(row.seq, facts.reported_seq) + 1
    expires_at = now + desired_ttl()
    try:
        payload = DesiredPayload(
            device_id=facts.device_id,
            seq=seq,
            issued_at=now,
            expires_at=expires_at,
            models=models,
        )
        # sign_desired(payload, key), with the payload encoded once for column and envelope.
        encoded = payload.to_json()
        envelope = sign_envelope(encoded, key)
    except ProtocolError as exc:
        raise ServiceError(
            exc.code, f"desired state for {brief(facts.device_id)}: {exc.detail}"
        ) from None
    row.seq = seq
    if isinstance(row, DesiredState):  # saved by the ORM; _Locked rows write the text
        row.payload = payload.to_dict()
    row.envelope = envelope
    row.issued_at = now
    row.expires_at = expires_at
    return encoded.decode()


def _now() -> datetime:
    # Whole seconds: the ESP32 stub parses `...:SSZ` and the payload stays compact.
    return timezone.now().replace(microsecond=0)


# --- row locks -----------------------------------------------------------------------


def _row_lock(device_pk: int) -> DesiredState:
    """Lock the device's outbox row, creating it first if it has none."""
    row = DesiredState.objects.select_for_update().filter(device_id=device_pk).first()
    if row is None:
        # Two first writers can race here. get_or_create's INSERT makes the loser wait
        # on the unique index until the winner commits, then read the winner's row;
        # the lock below orders the two from then on.
        DesiredState.objects.get_or_create(device_id=device_pk)
        row = DesiredState.objects.select_for_update().get(device_id=device_pk)
    return row


_LOCKED_COLUMNS = ("pk", "device_id", "seq", KT("payload__models"), KT("payload__expires_at"))


def _rows_lock(pks: list[int], *, create: bool = True) -> dict[int, _Locked]:
    """Lock the outbox rows of ``pks`` (sorted, so concurrent batches cannot deadlock),
    creating those missing first unless ``create`` is false."""
    # The old envelope is never read, only replaced: not worth fetching.
    locked = DesiredState.objects.select_for_update().order_by("device_id")
    rows = {
        values[1]: _Locked(*values)
        for values in filter_in(locked, "device_id", pks).values_list(*_LOCKED_COLUMNS)
    }
    missing = [pk for pk in pks if pk not in rows] if create else []
    if missing:
        DesiredState.objects.bulk_create(
            [DesiredState(device_id=pk) for pk in missing], ignore_conflicts=True
        )
        created = filter_in(locked, "device_id", missing).values_list(*_LOCKED_COLUMNS)
        rows.update({values[1]: _Locked(*values) for values in created})
    return rows


def _rows_save(rows: list[_Locked]) -> None:
    """Write the issued fields of many locked rows, and queue them in the outbox.

    Not ``bulk_update``: building its CASE expressions costs more Python per row than
    signing the envelope (``fleet.bulk``). The payload goes in as the JSON text that was
    signed, not encoded a second time.
    """
    if not rows:
        return
    columns_update(
        DesiredState,
        [r.pk for r in rows],
        {
            "seq": [r.seq for r in rows],
            "payload": [r.payload_json for r in rows],
            "envelope": [r.envelope for r in rows],
            "issued_at": [r.issued_at for r in rows],
            "expires_at": [r.expires_at for r in rows],
        },
        json_text={"payload"},
        as_is=True,
    )
    _outbox_queue([(r.pk, r.seq) for r in rows])
    notify(OUTBOX_CHANNEL)


def _outbox_queue(rows: list[tuple[int, int]]) -> None:
    """Queue ``(desired state pk, seq)`` pairs for the bridge, in the caller's transaction
    (a row already queued takes the new seq)."""
    if rows:
        columns_upsert(
            DesiredOutbox,
            {"desired": [pk for pk, _ in rows], "seq": [seq for _, seq in rows]},
            unique="desired",
            update=["seq"],
            as_is=True,
        )


def _fact(facts: dict[int, _DeviceFacts], device: Device) -> _DeviceFacts:
    found = facts.get(device.pk)
    if found is None:
        raise ServiceError(ErrorCode.NOT_FOUND, f"device {device.device_id} no longer exists")
    return found


# --- one device ------------------------------------------------------------------------


def device_desired_set(*, device: Device, assignments: list[ModelAssignment]) -> DesiredState:
    """Assign models to a device: merge them into its desired state, sign, write the outbox.

    One entry per model name: an assignment replaces the device's entry for that model,
    every other model keeps its entry. Refusals change nothing: ``forbidden`` (device
    revoked), ``malformed`` (a model assigned twice, or an artifact row that the wire
    format cannot carry), ``invalid_target_path``, ``hw_mismatch`` (artifact built for
    other hardware), ``not_found`` (device deleted meanwhile).
    """
    with transaction.atomic():
        row = _row_lock(device.pk)
        facts = _fact(_facts([device.pk]), device)
        targets = _targets(assignments, facts, {})
        models = _merged(_current_models(row), targets)
        _issue(row, facts, models, now=_now(), key=director_private_key())
        row.save(update_fields=ISSUE_FIELDS)
        _outbox_queue([(row.pk, row.seq)])
        notify(OUTBOX_CHANNEL)
    return row


def device_desired_reissue(*, device: Device) -> DesiredState:
    """Sign the device's current models again with a new seq and expiry (before it expires).

    Refuses ``forbidden`` for a revoked device and ``not_found`` when it has no desired
    state yet.
    """
    with transaction.atomic():
        row = _row_lock(device.pk)
        facts = _fact(_facts([device.pk]), device)
        if facts.revoked:
            raise ServiceError(ErrorCode.FORBIDDEN, f"device {facts.device_id} is revoked")
        if row.seq == 0:
            raise ServiceError(
                ErrorCode.NOT_FOUND, f"device {facts.device_id} has no desired state yet"
            )
        _issue(row, facts, tuple(_current_models(row)), now=_now(), key=director_private_key())
        row.save(update_fields=ISSUE_FIELDS)
        _outbox_queue([(row.pk, row.seq)])
        notify(OUTBOX_CHANNEL)
    return row


def device_desired_republish(*, device: Device) -> None:
    """Ask the bridge to publish the current envelope again (same seq), e.g. after the
    broker lost its retained messages. Refuses ``forbidden`` for a revoked device and
    ``not_found`` when there is nothing to publish."""
    if Device.objects.filter(pk=device.pk, revoked_at__isnull=False).exists():
        raise ServiceError(ErrorCode.FORBIDDEN, f"device {device.device_id} is revoked")
    # Without a lock: seq never moves here, and a re-sign meanwhile queues its own seq.
    with transaction.atomic():
        rows = DesiredState.objects.filter(device_id=device.pk, seq__gt=0)
        updated = rows.update(published_seq=0)
        if updated:
            _outbox_queue(list(rows.values_list("pk", "seq")))
            notify(OUTBOX_CHANNEL)
    if not updated:
        raise ServiceError(ErrorCode.NOT_FOUND, f"device {device.device_id} has no desired state")


def desired_states_requeue_since(*, recorded_since: datetime | None) -> int:
    """Queue again, for the bridge to publish, every desired state recorded as published
    after ``recorded_since`` (every published one when None): the broker came back without
    them (fleet/bridge/sentinel.py). Same seq and envelope; revoked devices are left out.
    How many rows were queued."""
    rows = DesiredState.objects.filter(
        seq__gt=0, published_at__isnull=False, device__revoked_at__isnull=True
    )
    if recorded_since is not None:
        rows = rows.filter(published_at__gt=recorded_since)
    queued = 0
    with transaction.atomic():
        last = 0
        while True:
            # In batches of keys: a fleet's worth of rows is never held at once.
            batch = list(
                rows.filter(pk__gt=last).order_by("pk").values_list("pk", "seq")[:BATCH_SIZE]
            )
            if not batch:
                break
            last = batch[-1][0]
            filter_in(DesiredState.objects.all(), "pk", [pk for pk, _ in batch]).update(
                published_seq=0
            )
            _outbox_queue(batch)
            queued += len(batch)
        if queued:
            notify(OUTBOX_CHANNEL)
    return queued


# --- the bridge's queue ----------------------------------------------------------------
# What the bridge's outbox reads and records (registered with it by fleet/apps.py:
# fleet.bridge.services.DesiredQueue).


def desired_outbox_keys(*, after: int, limit: int) -> list[tuple[int, int]]:
    """(desired state pk, seq) of up to ``limit`` queued rows with pk > ``after``, by pk."""
    return list(
        DesiredOutbox.objects.filter(pk__gt=after).order_by("pk").values_list("pk", "seq")[:limit]
    )


def desired_outbox_envelopes(*, pks: Sequence[int]) -> list[tuple[int, int, str, bytes]]:
    """(pk, seq, device id, envelope) of those desired states as they are now, by pk; a
    deleted one is left out."""
    rows = filter_in(DesiredState.objects.all(), "pk", pks).values_list(
        "pk", "seq", "device__device_id", "envelope"
    )
    return [(pk, seq, device_id, bytes(envelope)) for pk, seq, device_id, envelope in sorted(rows)]


def desired_outbox_forget(*, pks: Sequence[int]) -> None:
    """Unqueue rows whose desired state was deleted outside the ORM (the queue has no
    foreign key constraint; see DesiredOutbox)."""
    filter_in(DesiredOutbox.objects.all(), "pk", pks).delete()


def desired_states_mark_published(*, published: Iterable[tuple[int, int]], at: datetime) -> int:
    """Record that the broker acknowledged `(pk, seq)` publishes, and unqueue those rows;
    rows updated.

    Conditional on the row still having that seq: a row the director rewrote meanwhile
    stays queued and goes out again with its new envelope.
    """
    by_seq: dict[int, list[int]] = defaultdict(list)
    for pk, seq in published:
        by_seq[seq].append(pk)
    updated = 0
    with transaction.atomic():
        for seq, pks in by_seq.items():
            for start in range(0, len(pks), _UPDATE_CHUNK):
                chunk = pks[start : start + _UPDATE_CHUNK]
                rows = filter_in(DesiredState.objects.filter(seq=seq), "pk", chunk)
                updated += rows.update(published_seq=seq, published_at=at)
                filter_in(DesiredOutbox.objects.filter(seq=seq), "pk", chunk).delete()
    return updated


# --- many devices ----------------------------------------------------------------------


def _batch_sizes(total: int, largest: int) -> list[int]:
    """Batch sizes for ``total`` devices: up to ``largest``, doubling from FIRST_BATCH at the
    start and halving down to it at the end.

    Each batch is published by the bridge once it commits, so a small first batch starts
    the publishing early and a small last one leaves little to publish after the director
    returns; the large ones between keep the per-transaction cost low.
    """
    ramp = []
    size = min(FIRST_BATCH, largest)
    while size < largest:
        ramp.append(size)
        size *= 2
    head: list[int] = []
    tail: list[int] = []
    left = total
    for size in ramp:
        for side in (head, tail):
            if left:
                side.append(min(size, left))
                left -= side[-1]
    middle = [largest] * (left // largest) + ([left % largest] if left % largest else [])
    return [*head, *middle, *reversed(tail)]


def _chunks(items: Sequence[Device], size: int) -> Iterator[Sequence[Device]]:
    start = 0
    for count in _batch_sizes(len(items), size):
        yield items[start : start + count]
        start += count


def _assignments(
    assignments_for: Callable[[Device], list[ModelAssignment]], device: Device
) -> list[ModelAssignment] | ServiceError:
    try:
        return assignments_for(device)
    except ServiceError as exc:  # the caller's refusal for this device only
        return exc


def devices_desired_set(
    *,
    devices: Sequence[Device],
    assignments_for: Callable[[Device], list[ModelAssignment]],
    batch_size: int = BATCH_SIZE,
) -> DesiredSetResult:
    """``device_desired_set`` for many devices: what a rollout tick does for thousands.

    Devices go in batches of at most ``batch_size`` (smaller at the start and the end, so
    that the bridge starts publishing early and has little left when this returns), each
    one transaction (a savepoint when the caller has one open) with its rows locked in
    device order and written together. ``assignments_for`` is called outside the row
    locks; a ``ServiceError`` it raises refuses that device only. A refused device (same
    codes as ``device_desired_set``) is left unchanged and reported in ``refused`` by
    device id; the others go ahead.
    """
    ordered = sorted(devices, key=lambda d: d.pk)
    if len({d.pk for d in ordered}) != len(ordered):
        raise ServiceError(ErrorCode.MALFORMED, "a device is listed twice")
    key = director_private_key()
    targets_cache: _TargetCache = {}
    models_cache: _ModelsCache = {}
    issued, refused = 0, dict[str, ServiceError]()
    for batch in _chunks(ordered, batch_size):
        wanted = [(device, _assignments(assignments_for, device)) for device in batch]
        now = _now()
        with transaction.atomic():
            facts = _facts(d.pk for d in batch)
            accepted = []
            for device, assignments in wanted:
                try:
                    if isinstance(assignments, ServiceError):
                        raise assignments
                    fact = _fact(facts, device)
                    accepted.append((fact, _targets(assignments, fact, targets_cache)))
                except ServiceError as exc:
                    refused[device.device_id] = exc
            # Rows only for devices that passed: a refused one is left exactly as it was.
            rows = _rows_lock([fact.pk for fact, _ in accepted])
            changed = []
            for fact, targets in accepted:
                row = rows[fact.pk]
                try:
                    models = _merged(_locked_models(row, models_cache), targets)
                    row.payload_json = _issue(row, fact, models, now=now, key=key)
                except ServiceError as exc:
                    refused[fact.device_id] = exc
                    continue
                changed.append(row)
            _rows_save(changed)
        issued += len(changed)
    return DesiredSetResult(issued=issued, refused=refused)


def _expiring(before: datetime) -> QuerySet[DesiredState]:
    # expires_at is the envelope's own expiry (not issued_at + TTL), so a changed
    # FLEET_DESIRED_TTL cannot hide envelopes signed under the old one.
    return DesiredState.objects.filter(
        seq__gt=0, device__revoked_at__isnull=True, expires_at__lt=before
    )


def _expires_at(row: _Locked) -> datetime | None:
    try:
        return parse_timestamp(row.expires_text)
    except ProtocolError:
        return None


def _reissue_batch(
    pks: list[int], *, before: datetime, key: ec.EllipticCurvePrivateKey, cache: _ModelsCache
) -> int:
    now = _now()
    with transaction.atomic():
        facts = _facts(pks)
        changed = []
        for row in _rows_lock(pks, create=False).values():
            fact = facts.get(row.device_id)
            expires = _expires_at(row)
            # Checked again under the lock: a concurrent run or set may have re-signed it.
            if fact is None or fact.revoked or row.seq == 0 or (expires and expires >= before):
                continue
            try:
                models = tuple(_locked_models(row, cache))
                row.payload_json = _issue(row, fact, models, now=now, key=key)
            except ServiceError as exc:
                log.warning("cannot re-sign the desired state of %s: %s", fact.device_id, exc)
                continue
            changed.append(row)
        _rows_save(changed)
    return len(changed)


def desired_reissue_expiring(
    *, within: timedelta | None = None, batch_size: int = BATCH_SIZE
) -> int:
    """Re-sign every non-revoked device's desired state that expires within ``within``
    (default a third of the TTL), in batches of ``batch_size``; returns how many.

    Each row is visited at most once per call, so ``within`` longer than the TTL still ends.
    """
    ttl = desired_ttl()
    before = timezone.now() + (ttl / 3 if within is None else within)
    key = director_private_key()
    cache: _ModelsCache = {}
    count, after = 0, 0
    while True:
        pks = list(
            _expiring(before)
            .filter(device_id__gt=after)
            .order_by("device_id")
            .values_list("device_id", flat=True)[:batch_size]
        )
        if not pks:
            return count
        after = pks[-1]
        count += _reissue_batch(pks, before=before, key=key, cache=cache)
