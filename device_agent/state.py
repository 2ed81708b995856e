"""The agent's update state machine (docs/protocol.md, agent states): deciding, never doing.

`next_step(state, event) -> (state, actions)` is pure: no clock, no files, no network.
The runner (device_agent/runner.py) journals the returned state *before* it applies
the actions, and feeds back the event each action produced. So a journaled state
means "this state's entry actions may or may not have run", and `Recover` after a
crash re-issues them; every entry action is idempotent for that reason:

    state          entry actions                 done event        Recover
    idle           -                             -                 nothing
    downloading    Download (resumes the .part)  DownloadDone      Download again
    verifying      Verify (re-hashes the bytes)  Verified          Verify again
    staged         Stage (wipes the slot first)  Staged            Stage again
    swapped        Swap (points `current`)       Swapped           roll back
    trial          RunTrial                      TrialPassed       roll back
    committed      Commit, report                (runner) Continue Commit again
    rolling_back   RollBack                      RolledBack        RollBack again
    rolled_back    Discard, report               (runner) Continue same again
    failed         Discard, report               (runner) Continue same again

A job whose bytes are already live (`Job.relabel`: the same file published again under
a new version) starts in `committed`: nothing to download, stage or try.

Failures before the swap end in `failed` (nothing changed on the device); failures
from the swap on end in `rolling_back -> rolled_back`. A swap whose trial never
passed is never kept across a restart. `committed`, `failed` and `rolled_back` end
one job: the runner then sends `Continue`, which starts the next pending job of the
same desired state or returns to `idle`.
"""

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, TypeAlias

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import ModelTarget, Phase, Slot


class Status(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    SWAPPED = "swapped"
    TRIAL = "trial"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


# A job has ended in these; the runner answers with Continue.
TERMINAL = frozenset({Status.COMMITTED, Status.FAILED, Status.ROLLED_BACK})


class InvalidTransition(Exception):
    """An event that the current state does not accept (a bug in the caller)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """One model to install, as verified against the director and TUF.

    `format`, `floor` and `selftest` (JSON text or None) come from the TUF target's
    signed custom fields; `slot` is the inactive slot it is staged into and
    `previous_slot` the one `current` pointed at when the job was planned.

    `relabel`: the live slot already holds these exact bytes (same sha256), published
    under another version or release counter. Nothing is downloaded, staged or swapped:
    the job commits the new version for the bytes in place (`slot` is the live one).
    """

    seq: int
    target: ModelTarget
    format: str
    floor: int
    selftest: str | None
    slot: Slot
    previous_slot: Slot | None
    relabel: bool = False

    @property
    def model(self) -> str:
        return self.target.name

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["slot"] = str(self.slot)
        data["previous_slot"] = None if self.previous_slot is None else str(self.previous_slot)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        previous = data["previous_slot"]
        return cls(
            seq=int(data["seq"]),
            target=ModelTarget.from_dict(data["target"]),
            format=str(data["format"]),
            floor=int(data["floor"]),
            selftest=data["selftest"],
            slot=Slot(data["slot"]),
            previous_slot=None if previous is None else Slot(previous),
            relabel=bool(data.get("relabel", False)),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Failure:
    code: ErrorCode
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentState:
    """What the journal holds: the job in progress, the jobs after it, why it failed."""

    status: Status = Status.IDLE
    job: Job | None = None
    pending: tuple[Job, ...] = ()
    failure: Failure | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "job": None if self.job is None else self.job.to_dict(),
            "pending": [job.to_dict() for job in self.pending],
            "failure": None
            if self.failure is None
            else {"code": str(self.failure.code), "detail": self.failure.detail},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AgentState":
        failure = data["failure"]
        return cls(
            status=Status(data["status"]),
            job=None if data["job"] is None else Job.from_dict(data["job"]),
            pending=tuple(Job.from_dict(j) for j in data["pending"]),
            failure=None
            if failure is None
            else Failure(code=ErrorCode(failure["code"]), detail=str(failure["detail"])),
        )


IDLE = AgentState()


# --- events ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejection:
    """A refused desired state (model None) or one refused model entry of it."""

    seq: int
    model: str | None
    rollout_id: str | None
    code: ErrorCode
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DesiredAccepted:
    """A desired state passed full verification; `jobs` are the models to change."""

    seq: int
    jobs: tuple[Job, ...]
    rejected: tuple[Rejection, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class DesiredRejected:
    rejection: Rejection


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadProgress:
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class DownloadDone:
    pass


@dataclass(frozen=True, slots=True)
class Verified:
    pass


@dataclass(frozen=True, slots=True)
class Staged:
    pass


@dataclass(frozen=True, slots=True)
class Swapped:
    pass


@dataclass(frozen=True, slots=True)
class TrialPassed:
    pass


@dataclass(frozen=True, slots=True)
class RolledBack:
    pass


@dataclass(frozen=True, slots=True)
class Superseded:
    """A newer desired state arrived during the download: drop this plan, keep the part."""


@dataclass(frozen=True, slots=True)
class Continue:
    """Sent by the runner once a terminal state's actions are done."""


@dataclass(frozen=True, slots=True)
class Recover:
    """Sent once at start-up when the journal holds a state."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadFailed:
    code: ErrorCode
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifyFailed:
    code: ErrorCode
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class StageFailed:
    code: ErrorCode
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SwapFailed:
    code: ErrorCode
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialFailed:
    code: ErrorCode
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialTimedOut:
    detail: str


Event: TypeAlias = (
    DesiredAccepted
    | DesiredRejected
    | DownloadProgress
    | DownloadDone
    | DownloadFailed
    | Superseded
    | Verified
    | VerifyFailed
    | Staged
    | StageFailed
    | Swapped
    | SwapFailed
    | TrialPassed
    | TrialFailed
    | TrialTimedOut
    | RolledBack
    | Continue
    | Recover
)


# --- actions -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    """Publish an UpdateEvent."""

    seq: int
    model: str | None
    rollout_id: str | None
    phase: Phase
    progress: int | None = None
    code: ErrorCode | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Download:
    """Stream the job's bytes into downloads/<sha256>.part (resuming) -> DownloadDone."""

    job: Job


@dataclass(frozen=True, slots=True)
class Verify:
    """Check length and sha256 of the downloaded bytes -> Verified."""

    job: Job


@dataclass(frozen=True, slots=True)
class Stage:
    """Empty the job's slot and put the verified bytes in it -> Staged."""

    job: Job


@dataclass(frozen=True, slots=True)
class Swap:
    """Point models/<name>/current at the job's slot -> Swapped."""

    job: Job


@dataclass(frozen=True, slots=True)
class RunTrial:
    """Load, self-test and hook-check the model through `current` -> TrialPassed."""

    job: Job


@dataclass(frozen=True, slots=True)
class Commit:
    """Record the job's model as installed, raise the floor, drop the download."""

    job: Job


@dataclass(frozen=True, slots=True)
class RollBack:
    """Point `current` back at the previous slot (or remove it) -> RolledBack."""

    job: Job


@dataclass(frozen=True, slots=True)
class Discard:
    """Drop the job's download and, unless it is live, its staging slot."""

    job: Job


@dataclass(frozen=True, slots=True)
class PublishState:
    """Publish the retained reported state."""


Action: TypeAlias = (
    Report
    | Download
    | Verify
    | Stage
    | Swap
    | RunTrial
    | Commit
    | RollBack
    | Discard
    | PublishState
)

Step: TypeAlias = tuple[AgentState, list[Action]]


# --- transitions -------------------------------------------------------------------


def _report(job: Job, phase: Phase, **kwargs: Any) -> Report:
    return Report(
        seq=job.seq, model=job.model, rollout_id=job.target.rollout_id, phase=phase, **kwargs
    )


def _rejected(rejection: Rejection) -> Report:
    return Report(
        seq=rejection.seq,
        model=rejection.model,
        rollout_id=rejection.rollout_id,
        phase=Phase.REJECTED,
        code=rejection.code,
        detail=rejection.detail,
    )


def _start(job: Job, pending: tuple[Job, ...]) -> Step:
    if job.relabel:
        # The live bytes are the target's: record its version, report it committed.
        state = AgentState(status=Status.COMMITTED, job=job, pending=pending)
        return state, _committed_actions(job)
    state = AgentState(status=Status.DOWNLOADING, job=job, pending=pending)
    return state, [_report(job, Phase.DOWNLOADING, progress=0), Download(job)]


def _fail(state: AgentState, job: Job, code: ErrorCode, detail: str) -> Step:
    failure = Failure(code=code, detail=detail)
    return replace(state, status=Status.FAILED, failure=failure), _failed_actions(job, failure)


def _failed_actions(job: Job, failure: Failure) -> list[Action]:
    return [
        Discard(job),
        _report(job, Phase.FAILED, code=failure.code, detail=failure.detail),
        PublishState(),
    ]


def _roll_back(state: AgentState, job: Job, code: ErrorCode, detail: str) -> Step:
    failure = Failure(code=code, detail=detail)
    return replace(state, status=Status.ROLLING_BACK, failure=failure), [RollBack(job)]


def _rolled_back_actions(job: Job, failure: Failure | None) -> list[Action]:
    code = failure.code if failure else ErrorCode.HEALTH_CHECK_FAILED
    detail = failure.detail if failure else ""
    return [
        Discard(job),
        _report(job, Phase.ROLLED_BACK, code=code, detail=detail),
        PublishState(),
    ]


def _committed_actions(job: Job) -> list[Action]:
    return [Commit(job), _report(job, Phase.COMMITTED), PublishState()]


def _invalid(state: AgentState, event: Event) -> InvalidTransition:
    return InvalidTransition(f"{type(event).__name__} is not valid in state {state.status}")


def _accept(state: AgentState, event: DesiredAccepted) -> Step:
    actions: list[Action] = [_rejected(r) for r in event.rejected]
    actions += [_report(job, Phase.ACCEPTED) for job in event.jobs]
    if not event.jobs:
        return state, [*actions, PublishState()]
    new_state, start = _start(event.jobs[0], event.jobs[1:])
    return new_state, actions + start


def _recover(state: AgentState, job: Job) -> Step:
    status = state.status
    if status is Status.DOWNLOADING:
        return state, [Download(job)]
    if status is Status.VERIFYING:
        return state, [Verify(job)]
    if status is Status.STAGED:
        return state, [Stage(job)]
    if status in (Status.SWAPPED, Status.TRIAL):
        return _roll_back(
            state,
            job,
            ErrorCode.HEALTH_CHECK_FAILED,
            f"the agent restarted in state {status} before the trial passed",
        )
    if status is Status.ROLLING_BACK:
        return state, [RollBack(job)]
    if status is Status.COMMITTED:
        return state, _committed_actions(job)
    if status is Status.ROLLED_BACK:
        return state, _rolled_back_actions(job, state.failure)
    # FAILED: the only status left with a job.
    failure = state.failure or Failure(code=ErrorCode.DOWNLOAD_FAILED, detail="")
    return state, _failed_actions(job, failure)


def next_step(state: AgentState, event: Event) -> Step:
    """The state after `event` and the actions to apply, in order. Pure.

    Raises InvalidTransition for an event the state does not accept.
    """
    status, job = state.status, state.job
    if isinstance(event, DesiredRejected):
        return state, [_rejected(event.rejection)]
    if status is Status.IDLE:
        if isinstance(event, DesiredAccepted):
            return _accept(state, event)
        if isinstance(event, Recover):
            return state, []
        raise _invalid(state, event)
    if job is None:  # every other status has a job: a corrupt journal
        raise _invalid(state, event)
    if isinstance(event, Recover):
        return _recover(state, job)

    if status is Status.DOWNLOADING:
        if isinstance(event, DownloadProgress):
            percent = 100 * event.done // event.total if event.total else 100
            return state, [_report(job, Phase.DOWNLOADING, progress=min(100, max(0, percent)))]
        if isinstance(event, DownloadDone):
            return replace(state, status=Status.VERIFYING), [
                _report(job, Phase.DOWNLOADED),
                Verify(job),
            ]
        if isinstance(event, DownloadFailed):
            return _fail(state, job, event.code, event.detail)
        if isinstance(event, Superseded):
            # No event: the job did not fail, the director changed its mind; the newer
            # desired state plans again (and resumes the part if it wants the same bytes).
            return IDLE, []
    elif status is Status.VERIFYING:
        if isinstance(event, Verified):
            return replace(state, status=Status.STAGED), [_report(job, Phase.VERIFIED), Stage(job)]
        if isinstance(event, VerifyFailed):
            return _fail(state, job, event.code, event.detail)
    elif status is Status.STAGED:
        if isinstance(event, Staged):
            return replace(state, status=Status.SWAPPED), [_report(job, Phase.STAGED), Swap(job)]
        if isinstance(event, StageFailed):
            return _fail(state, job, event.code, event.detail)
    elif status is Status.SWAPPED:
        if isinstance(event, Swapped):
            return replace(state, status=Status.TRIAL), [
                _report(job, Phase.SWAPPED),
                _report(job, Phase.TRIAL),
                RunTrial(job),
            ]
        if isinstance(event, SwapFailed):
            return _roll_back(state, job, event.code, event.detail)
    elif status is Status.TRIAL:
        if isinstance(event, TrialPassed):
            return replace(state, status=Status.COMMITTED), _committed_actions(job)
        if isinstance(event, TrialFailed):
            return _roll_back(state, job, event.code, event.detail)
        if isinstance(event, TrialTimedOut):
            return _roll_back(state, job, ErrorCode.COMMIT_TIMEOUT, event.detail)
    elif status is Status.ROLLING_BACK:
        if isinstance(event, RolledBack):
            return replace(state, status=Status.ROLLED_BACK), _rolled_back_actions(
                job, state.failure
            )
    elif status in TERMINAL and isinstance(event, Continue):
        if state.pending:
            return _start(state.pending[0], state.pending[1:])
        return IDLE, []
    raise _invalid(state, event)


# Kept for tests and docs: every (status, event type) pair next_step accepts, other
# than DesiredRejected (any status) and Recover (any status).
TRANSITIONS: dict[Status, frozenset[type]] = {
    Status.IDLE: frozenset({DesiredAccepted}),
    Status.DOWNLOADING: frozenset({DownloadProgress, DownloadDone, DownloadFailed, Superseded}),
    Status.VERIFYING: frozenset({Verified, VerifyFailed}),
    Status.STAGED: frozenset({Staged, StageFailed}),
    Status.SWAPPED: frozenset({Swapped, SwapFailed}),
    Status.TRIAL: frozenset({TrialPassed, TrialFailed, TrialTimedOut}),
    Status.ROLLING_BACK: frozenset({RolledBack}),
    Status.COMMITTED: frozenset({Continue}),
    Status.ROLLED_BACK: frozenset({Continue}),
    Status.FAILED: frozenset({Continue}),
}
