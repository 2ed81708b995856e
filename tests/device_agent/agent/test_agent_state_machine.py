"""The pure update state machine: every (state, event) pair, valid or not."""

import itertools

import pytest
from agent_jobs import make_job

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Phase, Slot
from device_agent.state import (
    IDLE,
    TERMINAL,
    TRANSITIONS,
    AgentState,
    Commit,
    Continue,
    DesiredAccepted,
    DesiredRejected,
    Discard,
    Download,
    DownloadDone,
    DownloadFailed,
    DownloadProgress,
    Event,
    Failure,
    InvalidTransition,
    PublishState,
    Recover,
    Rejection,
    Report,
    RollBack,
    RolledBack,
    RunTrial,
    Stage,
    Staged,
    StageFailed,
    Status,
    Superseded,
    Swap,
    SwapFailed,
    Swapped,
    TrialFailed,
    TrialPassed,
    TrialTimedOut,
    Verified,
    Verify,
    VerifyFailed,
    next_step,
)

JOB = make_job()
NEXT = make_job("vad", seq=7, slot=Slot.B, previous=Slot.A)
REJECTION = Rejection(
    seq=7, model=None, rollout_id=None, code=ErrorCode.WRONG_DEVICE, detail="not me"
)

SAMPLE_EVENTS: dict[type, Event] = {
    DesiredAccepted: DesiredAccepted(seq=7, jobs=(JOB,)),
    DesiredRejected: DesiredRejected(rejection=REJECTION),
    DownloadProgress: DownloadProgress(done=50, total=200),
    DownloadDone: DownloadDone(),
    DownloadFailed: DownloadFailed(code=ErrorCode.DOWNLOAD_TIMEOUT, detail="stalled"),
    Verified: Verified(),
    VerifyFailed: VerifyFailed(code=ErrorCode.HASH_MISMATCH, detail="bad"),
    Staged: Staged(),
    StageFailed: StageFailed(code=ErrorCode.DISK_FULL, detail="full"),
    Swapped: Swapped(),
    SwapFailed: SwapFailed(code=ErrorCode.HEALTH_CHECK_FAILED, detail="EIO"),
    TrialPassed: TrialPassed(),
    TrialFailed: TrialFailed(code=ErrorCode.HEALTH_CHECK_FAILED, detail="self-test"),
    TrialTimedOut: TrialTimedOut(detail="slow"),
    RolledBack: RolledBack(),
    Superseded: Superseded(),
    Continue: Continue(),
    Recover: Recover(),
}


def in_state(status: Status, *, pending: tuple = (), failure: Failure | None = None) -> AgentState:
    if status is Status.IDLE:
        return IDLE
    return AgentState(status=status, job=JOB, pending=pending, failure=failure)


def kinds(actions: list) -> list[type]:
    return [type(a) for a in actions]


def phases(actions: list) -> list[Phase]:
    return [a.phase for a in actions if isinstance(a, Report)]


# (status, event type) -> (next status, action types)
VALID = {
    (Status.IDLE, DesiredAccepted): (Status.DOWNLOADING, [Report, Report, Download]),
    (Status.DOWNLOADING, DownloadProgress): (Status.DOWNLOADING, [Report]),
    (Status.DOWNLOADING, DownloadDone): (Status.VERIFYING, [Report, Verify]),
    (Status.DOWNLOADING, DownloadFailed): (Status.FAILED, [Discard, Report, PublishState]),
    (Status.VERIFYING, Verified): (Status.STAGED, [Report, Stage]),
    (Status.VERIFYING, VerifyFailed): (Status.FAILED, [Discard, Report, PublishState]),
    (Status.STAGED, Staged): (Status.SWAPPED, [Report, Swap]),
    (Status.STAGED, StageFailed): (Status.FAILED, [Discard, Report, PublishState]),
    (Status.SWAPPED, Swapped): (Status.TRIAL, [Report, Report, RunTrial]),
    (Status.SWAPPED, SwapFailed): (Status.ROLLING_BACK, [RollBack]),
    (Status.TRIAL, TrialPassed): (Status.COMMITTED, [Commit, Report, PublishState]),
    (Status.TRIAL, TrialFailed): (Status.ROLLING_BACK, [RollBack]),
    (Status.TRIAL, TrialTimedOut): (Status.ROLLING_BACK, [RollBack]),
    (Status.ROLLING_BACK, RolledBack): (Status.ROLLED_BACK, [Discard, Report, PublishState]),
    (Status.DOWNLOADING, Superseded): (Status.IDLE, []),
    (Status.COMMITTED, Continue): (Status.IDLE, []),
    (Status.FAILED, Continue): (Status.IDLE, []),
    (Status.ROLLED_BACK, Continue): (Status.IDLE, []),
}

RECOVER = {
    Status.IDLE: (Status.IDLE, []),
    Status.DOWNLOADING: (Status.DOWNLOADING, [Download]),
    Status.VERIFYING: (Status.VERIFYING, [Verify]),
    Status.STAGED: (Status.STAGED, [Stage]),
    Status.SWAPPED: (Status.ROLLING_BACK, [RollBack]),
    Status.TRIAL: (Status.ROLLING_BACK, [RollBack]),
    Status.ROLLING_BACK: (Status.ROLLING_BACK, [RollBack]),
    Status.COMMITTED: (Status.COMMITTED, [Commit, Report, PublishState]),
    Status.ROLLED_BACK: (Status.ROLLED_BACK, [Discard, Report, PublishState]),
    Status.FAILED: (Status.FAILED, [Discard, Report, PublishState]),
}


def test_the_documented_table_is_the_tested_one() -> None:
    documented = {(s, e) for s, events in TRANSITIONS.items() for e in events}
    assert documented == set(VALID)
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize(("status", "event_type"), sorted(VALID, key=str))
def test_valid_transition(status: Status, event_type: type) -> None:
    want_status, want_actions = VALID[(status, event_type)]
    state = in_state(status, failure=Failure(code=ErrorCode.HASH_MISMATCH, detail="x"))

    new_state, actions = next_step(state, SAMPLE_EVENTS[event_type])

    assert new_state.status is want_status
    assert kinds(actions) == want_actions
    if want_status is not Status.IDLE:
        assert new_state.job == JOB


INVALID = [
    (status, event_type)
    for status, event_type in itertools.product(Status, SAMPLE_EVENTS)
    if (status, event_type) not in VALID and event_type not in (DesiredRejected, Recover)
]


@pytest.mark.parametrize(("status", "event_type"), INVALID, ids=str)
def test_invalid_event_is_refused_naming_the_event_and_the_state(
    status: Status, event_type: type
) -> None:
    # (the state is frozen; that the agent keeps it, journal included, is
    # test_agent_runner.py's test_an_invalid_event_leaves_state_and_journal_alone)
    with pytest.raises(InvalidTransition) as refused:
        next_step(in_state(status), SAMPLE_EVENTS[event_type])
    assert str(refused.value) == f"{event_type.__name__} is not valid in state {status}"


def test_the_invalid_list_covers_everything_else() -> None:
    total = len(Status) * len(SAMPLE_EVENTS)
    assert len(INVALID) + len(VALID) + 2 * len(Status) == total


@pytest.mark.parametrize("status", list(Status))
def test_recover(status: Status) -> None:
    want_status, want_actions = RECOVER[status]
    state = in_state(status, failure=Failure(code=ErrorCode.HASH_MISMATCH, detail="x"))

    new_state, actions = next_step(state, Recover())

    assert new_state.status is want_status
    assert kinds(actions) == want_actions


@pytest.mark.parametrize("status", [Status.SWAPPED, Status.TRIAL])
def test_a_swap_that_never_committed_is_rolled_back_after_a_crash(status: Status) -> None:
    new_state, actions = next_step(in_state(status), Recover())
    assert new_state.failure is not None
    assert new_state.failure.code is ErrorCode.HEALTH_CHECK_FAILED
    assert actions == [RollBack(JOB)]


@pytest.mark.parametrize("status", list(Status))
def test_desired_rejected_only_reports_in_every_state(status: Status) -> None:
    state = in_state(status)
    new_state, actions = next_step(state, DesiredRejected(rejection=REJECTION))
    assert new_state == state
    assert len(actions) == 1
    report = actions[0]
    assert isinstance(report, Report)
    assert (report.phase, report.code, report.seq) == (Phase.REJECTED, ErrorCode.WRONG_DEVICE, 7)


def test_corrupt_state_without_a_job_is_refused() -> None:
    with pytest.raises(InvalidTransition):
        next_step(AgentState(status=Status.DOWNLOADING), DownloadDone())
    with pytest.raises(InvalidTransition):
        next_step(AgentState(status=Status.TRIAL), Recover())


def test_happy_path_reports_every_phase_in_order() -> None:
    state, reported = IDLE, []
    for event in (
        DesiredAccepted(seq=7, jobs=(JOB,)),
        DownloadProgress(done=1, total=2),
        DownloadDone(),
        Verified(),
        Staged(),
        Swapped(),
        TrialPassed(),
        Continue(),
    ):
        state, actions = next_step(state, event)
        reported += phases(actions)
    assert state == IDLE
    assert reported == [
        Phase.ACCEPTED,
        Phase.DOWNLOADING,
        Phase.DOWNLOADING,
        Phase.DOWNLOADED,
        Phase.VERIFIED,
        Phase.STAGED,
        Phase.SWAPPED,
        Phase.TRIAL,
        Phase.COMMITTED,
    ]


def test_progress_is_a_clamped_percentage() -> None:
    state = in_state(Status.DOWNLOADING)
    _, actions = next_step(state, DownloadProgress(done=50, total=200))
    assert isinstance(actions[0], Report)
    assert actions[0].progress == 25
    _, actions = next_step(state, DownloadProgress(done=0, total=0))
    assert isinstance(actions[0], Report)
    assert actions[0].progress == 100


@pytest.mark.parametrize(
    ("status", "event", "code"),
    [
        (Status.DOWNLOADING, SAMPLE_EVENTS[DownloadFailed], ErrorCode.DOWNLOAD_TIMEOUT),
        (Status.VERIFYING, SAMPLE_EVENTS[VerifyFailed], ErrorCode.HASH_MISMATCH),
        (Status.STAGED, SAMPLE_EVENTS[StageFailed], ErrorCode.DISK_FULL),
    ],
)
def test_failures_before_the_swap_end_failed_with_the_code(
    status: Status, event: Event, code: ErrorCode
) -> None:
    state, actions = next_step(in_state(status), event)
    assert state.status is Status.FAILED
    assert state.failure is not None
    assert state.failure.code is code
    (report,) = [a for a in actions if isinstance(a, Report)]
    assert (report.phase, report.code) == (Phase.FAILED, code)
    # nothing on the device changes: no swap, no rollback, only cleanup
    assert not any(isinstance(a, Swap | RollBack | Commit) for a in actions)


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (SAMPLE_EVENTS[TrialFailed], ErrorCode.HEALTH_CHECK_FAILED),
        (SAMPLE_EVENTS[TrialTimedOut], ErrorCode.COMMIT_TIMEOUT),
    ],
)
def test_trial_failures_roll_back_then_report_the_code(event: Event, code: ErrorCode) -> None:
    state, actions = next_step(in_state(Status.TRIAL), event)
    assert actions == [RollBack(JOB)]
    state, actions = next_step(state, RolledBack())
    assert state.status is Status.ROLLED_BACK
    (report,) = [a for a in actions if isinstance(a, Report)]
    assert (report.phase, report.code) == (Phase.ROLLED_BACK, code)


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_continue_starts_the_next_pending_job(status: Status) -> None:
    state = in_state(status, pending=(NEXT,))
    new_state, actions = next_step(state, Continue())
    assert new_state == AgentState(status=Status.DOWNLOADING, job=NEXT, pending=())
    assert actions[-1] == Download(NEXT)


def test_accepting_several_jobs_queues_the_rest_and_reports_rejections() -> None:
    rejected = Rejection(
        seq=7, model="asr", rollout_id=None, code=ErrorCode.DOWNGRADE_REFUSED, detail="floor"
    )
    state, actions = next_step(IDLE, DesiredAccepted(seq=7, jobs=(JOB, NEXT), rejected=(rejected,)))
    assert state == AgentState(status=Status.DOWNLOADING, job=JOB, pending=(NEXT,))
    assert phases(actions) == [Phase.REJECTED, Phase.ACCEPTED, Phase.ACCEPTED, Phase.DOWNLOADING]
    assert isinstance(actions[0], Report)
    assert actions[0].model == "asr"


def test_accepting_nothing_to_change_stays_idle_and_publishes_state() -> None:
    state, actions = next_step(IDLE, DesiredAccepted(seq=8, jobs=()))
    assert state == IDLE
    assert actions == [PublishState()]


def test_state_round_trips_through_its_journal_form() -> None:
    state = AgentState(
        status=Status.ROLLING_BACK,
        job=make_job(selftest='{"atol": "0.1"}', previous=Slot.B),
        pending=(NEXT,),
        failure=Failure(code=ErrorCode.COMMIT_TIMEOUT, detail="slow"),
    )
    assert AgentState.from_dict(state.to_dict()) == state
    assert AgentState.from_dict(IDLE.to_dict()) == IDLE
