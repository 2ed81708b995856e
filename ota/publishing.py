"""Publishing: CI-signed model metadata plus the artifact bytes, all or nothing.

The server never holds a release key. CI sends the model's next delegated targets
metadata, signed with its release key, together with the artifact; this module checks
the signature against the delegation, the new target against the bytes and the
registry rules, stores the blob, and only then commits rows and metadata in one
transaction. Any failure after the blob was stored deletes it again.
"""

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import User
from django.core.files import File
from django.core.files.storage import storages
from django.db import transaction
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization import DeserializationError

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.identifiers import ARTIFACT_FORMAT, FILENAME, HARDWARE, VERSION
from fleet.audit import audit_record
from fleet.errors import ServiceError
from fleet.identifiers import identifier_check
from ota import repository
from ota.models import Artifact, Model
from ota.selectors import model_get

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"[0-9a-f]{64}")
RESERVED_FIELDS = ("version", "hardware", "format", "release_counter", "floor")


@dataclass(frozen=True)
class Upload:
    """Artifact bytes already on disk, with their digest."""

    file: File[bytes]
    sha256: str
    length: int


@dataclass(frozen=True)
class NewTarget:
    path: str
    info: TargetFile
    version: str
    hardware: str
    format: str
    release_counter: int
    floor: int
    facts: dict[str, Any]


def _fail(code: ErrorCode, detail: str) -> ServiceError:
    return ServiceError(code, detail)


def metadata_parse(raw: bytes, *, model: Model) -> Metadata[Targets]:
    """Parse CI's metadata document, refusing anything that is not targets for this model."""
    try:
        md: Metadata[Any] = Metadata.from_bytes(raw)
    except (DeserializationError, ValueError, TypeError, KeyError) as exc:
        raise _fail(ErrorCode.MALFORMED, f"metadata is not valid TUF metadata: {exc}") from None
    if not isinstance(md.signed, Targets):
        raise _fail(ErrorCode.MALFORMED, f"metadata must be targets, not {md.signed.type}")
    if md.signed.delegations is not None:
        raise _fail(ErrorCode.MALFORMED, "model metadata may not delegate further")
    if md.signed.is_expired(datetime.now(UTC)):
        raise _fail(ErrorCode.METADATA_EXPIRED, "the signed metadata has already expired")
    return md


def _verify_signatures(model: Model, md: Metadata[Targets]) -> None:
    top = repository.metadata_latest("targets", Targets)
    if (
        top is None
        or top.signed.delegations is None
        or model.name not in (top.signed.delegations.roles or {})
    ):
        raise _fail(ErrorCode.UNKNOWN_MODEL, f"model {model.name!r} has no delegation")
    if not md.signatures:
        raise _fail(ErrorCode.SIGNATURE_INVALID, "the metadata is not signed")
    role = top.signed.delegations.roles[model.name]  # type: ignore[index]
    foreign = [k for k in md.signatures if k not in role.keyids]
    result = top.signed.get_verification_result(model.name, md.signed_bytes, md.signatures)
    if result.verified:
        return
    if foreign and not result.signed:
        raise _fail(
            ErrorCode.FORBIDDEN,
            f"key {foreign[0]} is not a registered (or is a revoked) release key of "
            f"model {model.name!r}",
        )
    if result.signed:
        raise _fail(
            ErrorCode.THRESHOLD_NOT_MET,
            f"{len(result.signed)} of {result.threshold} required release-key signatures",
        )
    raise _fail(ErrorCode.SIGNATURE_INVALID, "the release-key signature does not verify")


def _target_fields(model: Model, path: str, info: TargetFile) -> NewTarget:
    parts = path.split("/")
    if (
        len(parts) != 5
        or parts[0] != "models"
        or parts[1] != model.name
        or any(p in {"", ".", ".."} for p in parts)
        or "\\" in path
        or not FILENAME.is_valid(parts[4])
    ):
        raise _fail(
            ErrorCode.INVALID_TARGET_PATH,
            f"target path {path!r} must be models/{model.name}/<version>/<hardware>/<file>",
        )
    custom = info.custom
    version = identifier_check(VERSION, custom.get("version"), field="custom.version")
    hardware = identifier_check(HARDWARE, custom.get("hardware"), field="custom.hardware")
    fmt = identifier_check(ARTIFACT_FORMAT, custom.get("format"), field="custom.format")
    if parts[2] != version or parts[3] != hardware:
        raise _fail(
            ErrorCode.INVALID_TARGET_PATH,
            f"target path {path!r} does not match version {version} / hardware {hardware}",
        )
    counter = custom.get("release_counter")
    if type(counter) is not int or not 1 <= counter < 2**62:
        raise _fail(ErrorCode.MALFORMED, "release_counter must be a positive integer")
    floor = custom.get("floor", 0)
    if type(floor) is not int or not 0 <= floor <= counter:
        raise _fail(ErrorCode.MALFORMED, "floor must be an integer from 0 to release_counter")
    sha = info.hashes.get("sha256")
    if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
        raise _fail(ErrorCode.MALFORMED, "the target must carry a sha256 hash")
    facts = {k: v for k, v in custom.items() if k not in RESERVED_FIELDS}
    return NewTarget(path, info, version, hardware, fmt, counter, floor, facts)


def _check(model: Model, md: Metadata[Targets], upload: Upload | None) -> NewTarget | None:
    """Every rule a publish must pass, against the current state. Read-only."""
    _verify_signatures(model, md)
    current = repository.metadata_latest(model.name, Targets)
    current_version = current.signed.version if current else 0
    if md.signed.version != current_version + 1:
        raise _fail(
            ErrorCode.CONFLICT,
            f"metadata version {md.signed.version} does not follow the current "
            f"{current_version}: another publish changed it; refetch and retry",
        )
    old = current.signed.targets if current else {}
    new = md.signed.targets
    for path, info in old.items():
        if path not in new:
            raise _fail(ErrorCode.MALFORMED, f"publishing may not remove target {path}")
        if new[path] != info:
            raise _fail(ErrorCode.VERSION_EXISTS, f"target {path} is published and cannot change")
    added = [p for p in new if p not in old]
    if upload is None:
        if added:
            raise _fail(ErrorCode.MALFORMED, "new targets need their artifact: use publish")
        return None
    if not added:
        raise _fail(ErrorCode.VERSION_EXISTS, "every target in this metadata is already published")
    if len(added) != 1:
        raise _fail(ErrorCode.MALFORMED, f"a publish adds exactly one target, not {len(added)}")
    target = _target_fields(model, added[0], new[added[0]])
    if Artifact.objects.filter(
        model=model, version=target.version, hardware=target.hardware
    ).exists():
        raise _fail(
            ErrorCode.VERSION_EXISTS,
            f"{model.name} {target.version} for {target.hardware} is already published",
        )
    same_version = set(
        Artifact.objects.filter(model=model, version=target.version).values_list(
            "release_counter", flat=True
        )
    )
    if same_version and same_version != {target.release_counter}:
        raise _fail(
            ErrorCode.ROLLBACK_DETECTED,
            f"release_counter {target.release_counter} differs from version "
            f"{target.version}'s {sorted(same_version)[0]}",
        )
    if not same_version:
        highest = (
            Artifact.objects.filter(model=model)
            .order_by("-release_counter")
            .values_list("release_counter", flat=True)
            .first()
        )
        if highest is not None and target.release_counter <= highest:
            raise _fail(
                ErrorCode.ROLLBACK_DETECTED,
                f"release_counter {target.release_counter} is not above the latest {highest}",
            )
    if target.info.length != upload.length or target.info.hashes["sha256"] != upload.sha256:
        raise _fail(
            ErrorCode.HASH_MISMATCH,
            f"uploaded bytes (sha256 {upload.sha256}, {upload.length} bytes) differ from the "
            f"signed target (sha256 {target.info.hashes['sha256']}, {target.info.length} bytes)",
        )
    return target


def artifact_publish(*, model_name: str, metadata: bytes, upload: Upload, by: User) -> Artifact:
    """Publish one artifact with the model's next CI-signed targets metadata."""
    model = model_get(model_name)
    md = metadata_parse(metadata, model=model)
    target = _check(model, md, upload)
    assert target is not None  # noqa: S101 - _check returns a target whenever upload is given
    storage = storages["artifacts"]
    # Stored before the lock: a large upload to S3 must not block other publishers.
    key = f"models/{model.name}/{target.version}/{target.hardware}/{upload.sha256}"
    stored = storage.save(key, upload.file)
    try:
        with transaction.atomic():
            repository.repository_lock()
            _check(model, md, upload)  # again, under the lock: another publish may have won
            artifact = Artifact.objects.create(
                model=model,
                version=target.version,
                hardware=target.hardware,
                format=target.format,
                release_counter=target.release_counter,
                floor=target.floor,
                target_path=target.path,
                sha256=upload.sha256,
                length=upload.length,
                storage_key=stored,
                facts=target.facts,
                published_by=by,
                metadata_version=md.signed.version,
            )
            repository.delegated_metadata_store(model, md)
            audit_record(
                action="publish",
                target=f"{model.name} {target.version} ({target.hardware})",
                by=by,
            )
    except BaseException:
        storage.delete(stored)
        raise
    log.info("published %s as %s (%d bytes)", target.path, stored, upload.length)
    return artifact


@transaction.atomic
def model_metadata_update(*, model_name: str, metadata: bytes) -> int:
    """Accept re-signed model metadata that adds no target (e.g. after a key rotation)."""
    model = model_get(model_name)
    md = metadata_parse(metadata, model=model)
    repository.repository_lock()
    _check(model, md, None)
    repository.delegated_metadata_store(model, md)
    return md.signed.version
