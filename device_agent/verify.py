"""Full verification of a `desired` envelope (docs/protocol.md, "Verifying a desired state").

Two independent signatures must agree before anything is installed:

1. the director's: the DSSE envelope verifies with the pinned `trust/director.pem`
   (signature_invalid, malformed, payload_too_large), names this device
   (wrong_device), has a seq above the last accepted one (replayed_command) and has
   not expired against max(clock, last trusted time) (command_expired), and was
   not issued further ahead of the clock than the config allows (issued_in_future:
   its issued_at becomes the trusted time, which must not leap ahead);
2. the image repository's: for each model entry that would change the device, a
   TUF `ngclient.Updater` bootstrapped from the pinned `trust/root.json` refreshes
   and looks the target up. It must exist and agree with the director on sha256,
   length, hardware, version and release counter (director_image_mismatch), be
   for this device's hardware (hw_mismatch), stay at or above the model's floor
   (downgrade_refused) and live under models/<name>/ (invalid_target_path). TUF
   failures keep their meaning: rollback_detected, metadata_expired,
   signature_invalid, hash_mismatch, metadata_too_large, download_failed/_timeout.
   A repository that does not answer (refused, reset, no response, 5xx) is asked
   again with backoff until the refresh's deadline; past it the desired state is
   `Unavailable`, judged again later, and no event says it failed.

Refusals change nothing: the envelope's refusal is one `rejected` event, a model
entry's refusal is a `rejected` event for that model while the other models go on.
"""

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater

from device_agent.download import backoff_delay
from device_agent.protocol.envelope import verify_desired
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.messages import DesiredState, ModelTarget
from device_agent.slots import ModelSlots
from device_agent.state import DesiredAccepted, DesiredRejected, Job, Rejection
from device_agent.store import AgentStore
from device_agent.tuf_fetch import DeadlineFetcher, is_transient
from device_agent.tuf_reference_time import reference_time_set

log = logging.getLogger(__name__)
_T = TypeVar("_T")

TUF_SOCKET_TIMEOUT_S = 30.0
TUF_DEADLINE_S = 120.0
TUF_BACKOFF_S = 1.0
TUF_BACKOFF_MAX_S = 60.0


class Refused(Exception):
    """A refusal with its wire code."""

    def __init__(self, code: ErrorCode, detail: str, *, seq: int = 0) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.seq = seq  # 0 until the envelope's signature verified


class TufUnavailable(Exception):
    """The repository did not answer within the refresh's deadline (or the wait for it
    was interrupted): nothing is wrong with the desired state, judge it again later."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class TargetLookup(Protocol):
    """What verification needs from TUF: one refreshed view of the repository."""

    def get_targetinfo(self, target_path: str) -> TargetFile | None: ...


@dataclass(frozen=True, kw_only=True)
class VerifyContext:
    device_id: str
    hardware: str
    director_key: ec.EllipticCurvePublicKey
    models_dir: Path
    now: datetime
    # How far issued_at may be ahead of `now`; None: no bound (no trustworthy clock).
    max_issued_ahead: timedelta | None = None
    # Called at most once per envelope, only when some model needs TUF.
    tuf: Callable[[], TargetLookup]


@dataclass(frozen=True, kw_only=True)
class Ignored:
    """The retained copy of the last accepted envelope, redelivered: nothing to do."""

    seq: int


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """A verified, fresh desired state: the event for the state machine plus what the
    runner records once the jobs are journaled (seq, digest, issued_at)."""

    event: DesiredAccepted
    desired: DesiredState
    digest: str


@dataclass(frozen=True, kw_only=True)
class Unavailable:
    """The TUF repository could not be reached in time: no verdict, no event; the runner
    judges the envelope again later."""

    seq: int
    code: ErrorCode
    detail: str


Outcome = Accepted | DesiredRejected | Ignored | Unavailable


def envelope_digest(envelope: bytes) -> str:
    return hashlib.sha256(envelope).hexdigest()


def tuf_updater(
    *,
    trust_root: Path,
    metadata_dir: Path,
    tuf_url: str,
    socket_timeout_s: float = TUF_SOCKET_TIMEOUT_S,
    deadline_s: float = TUF_DEADLINE_S,
    backoff_s: float = TUF_BACKOFF_S,
    backoff_max_s: float = TUF_BACKOFF_MAX_S,
    reference_time: Callable[[], datetime] | None = None,
    ca_certs: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    interrupted: Callable[[], bool] = lambda: False,
) -> Callable[[], TargetLookup]:
    """A factory of refreshed Updaters (ngclient allows one refresh per instance).

    `reference_time` is the time metadata expiry is judged against. ngclient reads
    the system clock; the agent passes max(clock, last trusted time) instead, so a
    device whose clock was set back still refuses expired (frozen) metadata, as it
    refuses expired director commands.

    The whole refresh ends within `deadline_s`. A server that does not answer
    (tuf_fetch.is_transient: refused, reset, silent, 5xx) is asked again after a
    jittered exponential backoff (`backoff_s` doubling up to `backoff_max_s`), with a
    new Updater that starts from the metadata already trusted on disk; a failure past
    the deadline, or a wait cut short by `interrupted()` (`sleep` is expected to return
    early then), raises TufUnavailable. Any other failure is raised as it is: it is a
    verdict on the repository, not an outage.
    """

    def attempt(remaining_s: float) -> TargetLookup:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        base = tuf_url if tuf_url.endswith("/") else tuf_url + "/"
        updater = Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=base,
            target_base_url=base + "targets/",
            fetcher=DeadlineFetcher(
                socket_timeout_s=min(socket_timeout_s, max(remaining_s, 1.0)),
                deadline_s=max(remaining_s, 0.1),
                app_user_agent="fleet-agent",
                ca_certs=ca_certs,
            ),
            bootstrap=trust_root.read_bytes(),
        )
        if reference_time is not None:
            reference_time_set(updater, reference_time())
        updater.refresh()
        return updater

    def retrying(step: Callable[[float], _T], what: str) -> _T:
        deadline = time.monotonic() + deadline_s
        failures = 0
        while True:
            try:
                return step(deadline - time.monotonic())
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                delay = backoff_delay(failures, backoff_s, backoff_max_s)
                if time.monotonic() + delay >= deadline:
                    raise TufUnavailable(
                        tuf_error_code(exc),
                        f"TUF repository unavailable for {deadline_s:g}s: {exc}",
                    ) from exc
                log.warning("TUF %s failed (%s); trying again in %.1fs", what, exc, delay)
                sleep(delay)
                if interrupted():
                    raise TufUnavailable(
                        tuf_error_code(exc), f"TUF {what} interrupted: {exc}"
                    ) from exc

    def make() -> TargetLookup:
        updater = retrying(attempt, "refresh")
        # A lookup may fetch delegated targets metadata: the same outage rule applies.
        return _RetryingLookup(
            lambda path: retrying(lambda _remaining: updater.get_targetinfo(path), "lookup")
        )

    return make


@dataclass(frozen=True)
class _RetryingLookup:
    lookup: Callable[[str], TargetFile | None]

    def get_targetinfo(self, target_path: str) -> TargetFile | None:
        return self.lookup(target_path)


def tuf_error_code(exc: BaseException) -> ErrorCode:
    """The stable code for an exception out of ngclient."""
    if isinstance(exc, tuf_exceptions.BadVersionNumberError):
        return ErrorCode.ROLLBACK_DETECTED
    if isinstance(exc, tuf_exceptions.ExpiredMetadataError):
        return ErrorCode.METADATA_EXPIRED
    if isinstance(exc, tuf_exceptions.UnsignedMetadataError):
        return ErrorCode.SIGNATURE_INVALID
    if isinstance(exc, tuf_exceptions.LengthOrHashMismatchError):
        return ErrorCode.HASH_MISMATCH
    if isinstance(exc, tuf_exceptions.DownloadLengthMismatchError):
        return ErrorCode.METADATA_TOO_LARGE
    if isinstance(exc, tuf_exceptions.SlowRetrievalError):
        return ErrorCode.DOWNLOAD_TIMEOUT
    if isinstance(exc, tuf_exceptions.DownloadError | OSError):
        return ErrorCode.DOWNLOAD_FAILED
    if isinstance(exc, tuf_exceptions.RepositoryError | ValueError):
        return ErrorCode.MALFORMED
    return ErrorCode.DOWNLOAD_FAILED  # urllib3 errors that escape ngclient's fetcher


def check_envelope(
    envelope: bytes, ctx: VerifyContext, store: AgentStore
) -> DesiredState | Ignored:
    """The director half: signature, device, replay, expiry. Raises Refused."""
    try:
        desired = verify_desired(envelope, ctx.director_key)
    except ProtocolError as exc:
        raise Refused(exc.code, exc.detail) from None
    if desired.device_id != ctx.device_id:
        raise Refused(
            ErrorCode.WRONG_DEVICE,
            f"addressed to {desired.device_id}, not {ctx.device_id}",
            seq=desired.seq,
        )
    if store.last_seq is not None and desired.seq <= store.last_seq:
        if desired.seq == store.last_seq and envelope_digest(envelope) == store.last_digest:
            return Ignored(seq=desired.seq)
        raise Refused(
            ErrorCode.REPLAYED_COMMAND,
            f"seq {desired.seq} is not above the last accepted {store.last_seq}",
            seq=desired.seq,
        )
    trusted_now = max(ctx.now, store.last_trusted_time or ctx.now)
    if desired.expires_at <= trusted_now:
        raise Refused(
            ErrorCode.COMMAND_EXPIRED,
            f"expired at {desired.expires_at:%Y-%m-%dT%H:%M:%SZ}, "
            f"now is {trusted_now:%Y-%m-%dT%H:%M:%SZ}",
            seq=desired.seq,
        )
    # After expiry: a stale command is stale whatever this clock says.
    if ctx.max_issued_ahead is not None and desired.issued_at > ctx.now + ctx.max_issued_ahead:
        raise Refused(
            ErrorCode.ISSUED_IN_FUTURE,
            f"issued at {desired.issued_at:%Y-%m-%dT%H:%M:%SZ}, more than "
            f"{ctx.max_issued_ahead.total_seconds():g}s ahead of this device's clock",
            seq=desired.seq,
        )
    return desired


def _custom_int(custom: dict[str, Any], key: str, default: int | None = None) -> int:
    value = custom.get(key, default)
    if type(value) is not int or value < 0:
        raise Refused(ErrorCode.MALFORMED, f"TUF target custom {key} {value!r} is not an integer")
    return value


def check_target(
    entry: ModelTarget, info: TargetFile | None, *, hardware: str, floor: int
) -> tuple[str, int, str | None]:
    """The image-repository half for one entry; returns (format, floor, selftest JSON)."""
    if info is None:
        raise Refused(ErrorCode.DIRECTOR_IMAGE_MISMATCH, f"TUF has no target {entry.path}")
    custom = info.custom
    if not isinstance(custom, dict):
        raise Refused(ErrorCode.MALFORMED, f"TUF target {entry.path} has no custom fields")
    target_hw = custom.get("hardware")
    if target_hw != hardware:
        raise Refused(
            ErrorCode.HW_MISMATCH, f"TUF target is for {target_hw!r}, this device is {hardware}"
        )
    disagreements = [
        name
        for name, director, tuf in (
            ("sha256", entry.sha256, info.hashes.get("sha256")),
            ("length", entry.length, info.length),
            ("hardware", entry.hardware, target_hw),
            ("version", entry.version, custom.get("version")),
            ("release_counter", entry.release_counter, custom.get("release_counter")),
        )
        if director != tuf
    ]
    if disagreements:
        raise Refused(
            ErrorCode.DIRECTOR_IMAGE_MISMATCH,
            f"director and TUF disagree on {', '.join(disagreements)} of {entry.path}",
        )
    if entry.release_counter < floor:
        raise Refused(
            ErrorCode.DOWNGRADE_REFUSED,
            f"release counter {entry.release_counter} is below the floor {floor}",
        )
    target_floor = _custom_int(custom, "floor", 0)
    if target_floor > entry.release_counter:
        raise Refused(ErrorCode.MALFORMED, "TUF target floor is above its release counter")
    fmt = custom.get("format")
    if not isinstance(fmt, str) or not fmt:
        raise Refused(ErrorCode.MALFORMED, f"TUF target {entry.path} has no format")
    selftest = custom.get("selftest")
    selftest_json = None if selftest is None else json.dumps(selftest, sort_keys=True)
    return fmt, target_floor, selftest_json


def _live_bytes(entry: ModelTarget, store: AgentStore, slots: ModelSlots) -> bool:
    """Whether the live slot already holds the entry's bytes (same sha256)."""
    record = store.models.get(entry.name)
    installed = record.installed if record else None
    return (
        installed is not None
        and installed.sha256 == entry.sha256
        and slots.current() is installed.slot
    )


def _needs_install(entry: ModelTarget, store: AgentStore, slots: ModelSlots) -> bool:
    return not _live_bytes(entry, store, slots)


def _relabels(entry: ModelTarget, store: AgentStore, slots: ModelSlots) -> bool:
    """The live bytes published again under another version or release counter (the
    same file re-published): a job that only records the new version, no download."""
    record = store.models.get(entry.name)
    installed = record.installed if record else None
    return (
        installed is not None
        and _live_bytes(entry, store, slots)
        and (installed.version, installed.release_counter) != (entry.version, entry.release_counter)
    )


def evaluate(envelope: bytes, ctx: VerifyContext, store: AgentStore) -> Outcome:
    """Judge one `desired` message against the device's state; pure apart from TUF IO."""
    try:
        checked = check_envelope(envelope, ctx, store)
    except Refused as exc:
        return DesiredRejected(
            rejection=Rejection(
                seq=exc.seq, model=None, rollout_id=None, code=exc.code, detail=exc.detail
            )
        )
    if isinstance(checked, Ignored):
        return checked
    desired = checked
    seq = desired.seq
    jobs: list[Job] = []
    rejected: list[Rejection] = []
    lookup: TargetLookup | None = None
    lookup_error: Refused | None = None
    for entry in desired.models:
        slots = ModelSlots(ctx.models_dir, entry.name)
        relabel = _relabels(entry, store, slots)
        if not relabel and not _needs_install(entry, store, slots):
            continue
        try:
            if not entry.path.startswith(f"models/{entry.name}/"):
                raise Refused(
                    ErrorCode.INVALID_TARGET_PATH, f"{entry.path} is outside models/{entry.name}/"
                )
            if entry.hardware != ctx.hardware:
                raise Refused(
                    ErrorCode.HW_MISMATCH,
                    f"{entry.path} is for {entry.hardware}, this device is {ctx.hardware}",
                )
            if lookup is None and lookup_error is None:
                try:
                    lookup = ctx.tuf()
                except TufUnavailable as exc:  # an outage: no verdict yet
                    return Unavailable(seq=seq, code=exc.code, detail=exc.detail)
                except Exception as exc:  # every other ngclient failure is a refusal
                    lookup_error = Refused(tuf_error_code(exc), f"TUF refresh failed: {exc!r}")
            if lookup is None:
                raise lookup_error or Refused(ErrorCode.DOWNLOAD_FAILED, "no TUF view")
            try:
                info = lookup.get_targetinfo(entry.path)
            except TufUnavailable as exc:  # an outage: no verdict yet
                return Unavailable(seq=seq, code=exc.code, detail=exc.detail)
            except Exception as exc:
                raise Refused(tuf_error_code(exc), f"TUF lookup failed: {exc!r}") from None
            fmt, floor, selftest = check_target(
                entry, info, hardware=ctx.hardware, floor=store.floor(entry.name)
            )
        except Refused as exc:
            rejected.append(
                Rejection(
                    seq=seq,
                    model=entry.name,
                    rollout_id=entry.rollout_id,
                    code=exc.code,
                    detail=exc.detail,
                )
            )
            continue
        live = slots.current()
        jobs.append(
            Job(
                seq=seq,
                target=entry,
                format=fmt,
                floor=floor,
                selftest=selftest,
                slot=live if relabel and live is not None else slots.inactive(),
                previous_slot=live,
                relabel=relabel,
            )
        )
    return Accepted(
        event=DesiredAccepted(seq=seq, jobs=tuple(jobs), rejected=tuple(rejected)),
        desired=desired,
        digest=envelope_digest(envelope),
    )
