"""The TUF image repository (docs/security.md), kept in the database.

Top-level roles root/targets/snapshot/timestamp, plus one delegated targets role per
model, named after the model, trusted for ``models/<name>/*/*/*`` and signed by CI's
release keys. Every write locks the single :class:`RepositoryLock` row, appends new
metadata versions and re-signs snapshot and timestamp with the online keys, all in
one transaction: a failed write changes nothing that is served.
"""

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from securesystemslib.signer import Key, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import MODEL_NAME
from fleet.audit import audit_record
from fleet.errors import ServiceError
from fleet.identifiers import identifier_check
from ota.models import Model, ReleaseKey, RepositoryLock, TufMetadata
from ota.signing import KeyFileError, keypair_generate, signer_load

log = logging.getLogger(__name__)

TOP_LEVEL_ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
ONLINE_ROLES = (Snapshot.type, Timestamp.type)
SERIALIZER = JSONSerializer(compact=True)


def _expiry(delta: timedelta) -> datetime:
    return (datetime.now(UTC) + delta).replace(microsecond=0)


def delegated_paths(model_name: str) -> list[str]:
    # python-tuf matches path patterns segment by segment, so the pattern spells out
    # models/<name>/<version>/<hardware>/<file>.
    return [f"models/{model_name}/*/*/*"]


# --- keys -------------------------------------------------------------------------------


def key_path(role: str) -> Path:
    return Path(settings.FLEET_KEYS_DIR) / f"{role}.pem"


def signer_for(role: str, path: Path | None = None) -> Signer:
    """The signer of a top-level role, from the keys directory or an explicit key file."""
    try:
        return signer_load(path or key_path(role))
    except KeyFileError as exc:
        hint = "" if role in ONLINE_ROLES else f" (pass --{role}-key with the offline key file)"
        raise ServiceError(ErrorCode.FORBIDDEN, f"{role} key unavailable: {exc}{hint}") from None


# --- reading ----------------------------------------------------------------------------


def metadata_latest_row(role: str) -> TufMetadata | None:
    return TufMetadata.objects.filter(role=role).order_by("-version").first()


def metadata_latest[T: (Root, Snapshot, Targets, Timestamp)](
    role: str, signed_type: type[T]
) -> Metadata[T] | None:
    row = metadata_latest_row(role)
    if row is None:
        return None
    md: Metadata[Any] = Metadata.from_bytes(bytes(row.data))
    if not isinstance(md.signed, signed_type):
        raise RuntimeError(f"stored {role} metadata is {md.signed.type}")
    return md


def _require[T: (Root, Snapshot, Targets, Timestamp)](
    role: str, signed_type: type[T]
) -> Metadata[T]:
    md = metadata_latest(role, signed_type)
    if md is None:
        raise ServiceError(
            ErrorCode.NOT_FOUND, "the TUF repository is not initialised: run manage.py tuf_init"
        )
    return md


def repository_is_initialized() -> bool:
    return RepositoryLock.objects.exists()


# --- writing ----------------------------------------------------------------------------


def _lock() -> None:
    if not RepositoryLock.objects.select_for_update().filter(pk=1).exists():
        raise ServiceError(
            ErrorCode.NOT_FOUND, "the TUF repository is not initialised: run manage.py tuf_init"
        )


def metadata_store(role: str, md: Metadata[Any], signers: Iterable[Signer]) -> None:
    """Sign ``md`` with every signer (replacing old signatures) and append it."""
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    TufMetadata.objects.create(
        role=role,
        version=md.signed.version,
        data=md.to_bytes(SERIALIZER),
        expires=md.signed.expires,
    )


def _delegated_versions() -> dict[str, int]:
    rows = (
        TufMetadata.objects.exclude(role__in=TOP_LEVEL_ROLES)
        .values("role")
        .annotate(latest=Max("version"))
    )
    return {r["role"]: r["latest"] for r in rows}


def _snapshot_and_timestamp_resign(overrides: dict[str, Signer] | None = None) -> None:
    """New snapshot listing every targets role's current version, then a new timestamp."""
    overrides = overrides or {}
    targets = _require(Targets.type, Targets)
    snapshot = _require(Snapshot.type, Snapshot)
    snapshot.signed.version += 1
    snapshot.signed.expires = _expiry(settings.FLEET_TUF_SNAPSHOT_EXPIRY)
    meta = {"targets.json": MetaFile(version=targets.signed.version)}
    meta.update({f"{role}.json": MetaFile(version=v) for role, v in _delegated_versions().items()})
    snapshot.signed.meta = meta
    metadata_store(
        Snapshot.type, snapshot, [overrides.get(Snapshot.type) or signer_for(Snapshot.type)]
    )
    _timestamp_resign(snapshot.signed.version, overrides.get(Timestamp.type))


def _timestamp_resign(snapshot_version: int, signer: Signer | None = None) -> None:
    timestamp = _require(Timestamp.type, Timestamp)
    timestamp.signed.version += 1
    timestamp.signed.expires = _expiry(settings.FLEET_TUF_TIMESTAMP_EXPIRY)
    timestamp.signed.snapshot_meta = MetaFile(version=snapshot_version)
    metadata_store(Timestamp.type, timestamp, [signer or signer_for(Timestamp.type)])


@transaction.atomic
def repository_initialize(*, generate_missing_keys: bool) -> list[str]:
    """Create version 1 of the four top-level roles. Returns the roles whose keys were made."""
    if RepositoryLock.objects.exists():
        raise ServiceError(ErrorCode.CONFLICT, "the TUF repository is already initialised")
    made: list[str] = []
    keys: dict[str, Key] = {}
    for role in TOP_LEVEL_ROLES:
        path = key_path(role)
        if not path.exists():
            if not generate_missing_keys:
                raise ServiceError(ErrorCode.FORBIDDEN, f"missing {role} key file {path}")
            keypair_generate(path)
            made.append(role)
        keys[role] = signer_for(role).public_key
    RepositoryLock.objects.create(pk=1)

    root = Root(expires=_expiry(settings.FLEET_TUF_ROOT_EXPIRY), consistent_snapshot=True)
    for role, key in keys.items():
        root.add_key(key, role)
    metadata_store(Root.type, Metadata(root), [signer_for(Root.type)])
    targets = Targets(
        expires=_expiry(settings.FLEET_TUF_TARGETS_EXPIRY),
        delegations=Delegations(keys={}, roles={}),
    )
    metadata_store(Targets.type, Metadata(targets), [signer_for(Targets.type)])
    snapshot = Snapshot(expires=_expiry(settings.FLEET_TUF_SNAPSHOT_EXPIRY))
    metadata_store(Snapshot.type, Metadata(snapshot), [signer_for(Snapshot.type)])
    timestamp = Timestamp(expires=_expiry(settings.FLEET_TUF_TIMESTAMP_EXPIRY))
    metadata_store(Timestamp.type, Metadata(timestamp), [signer_for(Timestamp.type)])
    return made


def _targets_delegations_resign(targets_signer: Signer) -> None:
    """Rebuild top-level targets' delegations from the registered models and active keys."""
    targets = _require(Targets.type, Targets)
    keys: dict[str, Key] = {}
    roles: dict[str, DelegatedRole] = {}
    active = ReleaseKey.objects.filter(revoked_at__isnull=True).select_related("model")
    by_model: dict[str, list[str]] = {}
    for rk in active:
        keys[rk.keyid] = Key.from_dict(rk.keyid, dict(rk.public_key))
        by_model.setdefault(rk.model.name, []).append(rk.keyid)
    for model in Model.objects.order_by("name"):
        roles[model.name] = DelegatedRole(
            name=model.name,
            keyids=sorted(by_model.get(model.name, [])),
            threshold=model.threshold,
            terminating=True,
            paths=delegated_paths(model.name),
        )
    targets.signed.delegations = Delegations(keys=keys, roles=roles)
    targets.signed.version += 1
    targets.signed.expires = _expiry(settings.FLEET_TUF_TARGETS_EXPIRY)
    metadata_store(Targets.type, targets, [targets_signer])
    _snapshot_and_timestamp_resign()


def _key_row(model: Model, key: Key) -> ReleaseKey:
    if ReleaseKey.objects.filter(keyid=key.keyid).exists():
        raise ServiceError(ErrorCode.CONFLICT, f"release key {key.keyid} is already registered")
    return ReleaseKey.objects.create(keyid=key.keyid, public_key=key.to_dict(), model=model)


@transaction.atomic
def model_register(
    *,
    name: str,
    keys: list[Key],
    threshold: int,
    targets_signer: Signer,
    description: str = "",
    by: Any = None,
) -> Model:
    """Register a model name and its release keys: a new delegation in top-level targets."""
    identifier_check(MODEL_NAME, name, field="name")  # also refuses the TUF role names
    if not keys:
        raise ServiceError(ErrorCode.MALFORMED, "a model needs at least one release key")
    if not 1 <= threshold <= len(keys):
        raise ServiceError(ErrorCode.MALFORMED, f"threshold must be 1..{len(keys)}")
    _lock()
    if Model.objects.filter(name=name).exists():
        raise ServiceError(ErrorCode.CONFLICT, f"model {name!r} is already registered")
    model = Model.objects.create(name=name, threshold=threshold, description=description)
    for key in keys:
        _key_row(model, key)
    _targets_delegations_resign(targets_signer)
    # One row for the model and the keys it starts with (release_key.add is for later ones).
    audit_record(
        action="model.register",
        target=f"{name}, threshold {threshold}, key(s) {', '.join(k.keyid for k in keys)}",
        by=by,
    )
    return model


@transaction.atomic
def release_key_add(
    *, model: Model, key: Key, targets_signer: Signer, by: Any = None
) -> ReleaseKey:
    """Trust one more release key for a model (the first step of a key rotation)."""
    _lock()
    row = _key_row(model, key)
    _targets_delegations_resign(targets_signer)
    audit_record(action="release_key.add", target=f"{model.name} key {row.keyid}", by=by)
    return row


@transaction.atomic
def release_key_revoke(
    *, keyid: str, reason: str, targets_signer: Signer, by: Any = None
) -> ReleaseKey:
    """Stop trusting a release key: metadata signed only by it no longer verifies."""
    from django.utils import timezone

    _lock()
    row = ReleaseKey.objects.select_for_update().filter(keyid=keyid).first()
    if row is None:
        raise ServiceError(ErrorCode.NOT_FOUND, f"no release key {keyid}")
    if row.revoked_at is not None:
        raise ServiceError(ErrorCode.CONFLICT, f"release key {keyid} is already revoked")
    row.revoked_at = timezone.now()
    row.revoked_reason = reason[:200]
    row.save(update_fields=["revoked_at", "revoked_reason"])
    _targets_delegations_resign(targets_signer)
    audit_record(
        action="release_key.revoke",
        target=f"{row.model.name} key {row.keyid}",
        by=by,
        reason=reason,
    )
    return row


@transaction.atomic
def top_level_key_rotate(*, role: str, new_signer: Signer, root_signers: list[Signer]) -> int:
    """Replace the key of a top-level role with a new root version.

    The new root is signed by the current root key(s) and, when rotating root itself,
    by the new key as well, so clients holding the old root can walk to the new one.
    Returns the new root version.
    """
    if role not in TOP_LEVEL_ROLES:
        raise ServiceError(ErrorCode.MALFORMED, f"{role!r} is not a top-level role")
    _lock()
    root = _require(Root.type, Root)
    role_obj: Role = root.signed.roles[role]
    for keyid in list(role_obj.keyids):
        root.signed.revoke_key(keyid, role)
    root.signed.add_key(new_signer.public_key, role)
    root.signed.version += 1
    root.signed.expires = _expiry(settings.FLEET_TUF_ROOT_EXPIRY)
    signers = list(root_signers)
    if role == Root.type:
        signers.append(new_signer)
    metadata_store(Root.type, root, signers)
    if role == Targets.type:
        targets = _require(Targets.type, Targets)
        targets.signed.version += 1
        metadata_store(Targets.type, targets, [new_signer])
    # Snapshot and timestamp are re-signed last, a rotated online role with its new key;
    # the caller installs that key file once this transaction has committed.
    _snapshot_and_timestamp_resign({role: new_signer} if role in ONLINE_ROLES else None)
    audit_record(
        action="tuf_key.rotate",
        target=f"{role} key {new_signer.public_key.keyid} (root version {root.signed.version})",
    )
    return root.signed.version


@transaction.atomic
def repository_refresh(*, force: bool = False) -> list[str]:
    """Re-sign snapshot/timestamp before they expire (run by beat). Returns what changed."""
    if not RepositoryLock.objects.exists():
        return []
    _lock()
    now = datetime.now(UTC)
    snapshot = _require(Snapshot.type, Snapshot)
    timestamp = _require(Timestamp.type, Timestamp)
    if force or snapshot.signed.expires - now < settings.FLEET_TUF_SNAPSHOT_EXPIRY / 2:
        _snapshot_and_timestamp_resign()
        return [Snapshot.type, Timestamp.type]
    if timestamp.signed.expires - now < settings.FLEET_TUF_TIMESTAMP_EXPIRY / 2:
        _timestamp_resign(snapshot.signed.version)
        return [Timestamp.type]
    return []


def delegated_metadata_store(model: Model, md: Metadata[Targets]) -> None:
    """Append CI-signed model metadata (already verified) and re-sign snapshot/timestamp."""
    TufMetadata.objects.create(
        role=model.name,
        version=md.signed.version,
        data=md.to_bytes(SERIALIZER),
        expires=md.signed.expires,
    )
    _snapshot_and_timestamp_resign()


def repository_lock() -> None:
    """Lock the repository for a write; call inside a transaction."""
    _lock()
