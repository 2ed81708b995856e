"""The runner in-process: verification outcomes, journaling, and recovery from every state."""

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_device import Device, FakeTuf, Release, tflite
from agent_http import Behaviour, file_server

from device_agent.journal import Journal
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.messages import Slot
from device_agent.state import (
    AgentState,
    DownloadDone,
    Event,
    Failure,
    InvalidTransition,
    Job,
    Report,
    Status,
    Swapped,
    TrialPassed,
)
from device_agent.store import AgentStore

V1 = Release("1.0.0", 1, tflite(b"v1"))
V2 = Release("2.0.0", 2, tflite(b"v2", 80_000))


class Crash(Exception):
    """Stands in for SIGKILL: the runner stops between two actions."""


@pytest.fixture
def device(tmp_path: Path) -> Device:
    device = Device(tmp_path / "agent")
    device.tuf = FakeTuf([V1, V2])
    return device


def install(device: Device, release: Release, seq: int, url: str) -> None:
    device.runner().handle_desired(device.envelope(seq, [release.target(url)]))
    assert device.publisher.phases(seq)[-1] == "committed", device.publisher.events[-1]


def test_installs_and_records_everything(device: Device) -> None:
    with file_server(Behaviour(data=V1.data)) as url:
        install(device, V1, 1, url)
    assert device.current_bytes() == V1.data
    store = AgentStore.load(device.layout.store)
    assert store.last_seq == 1
    record = store.models["kws"]
    assert record.installed is not None
    assert (record.installed.version, record.installed.slot) == ("1.0.0", Slot.A)
    assert not device.layout.journal.exists()
    assert list(device.layout.downloads.iterdir()) == []
    assert device.publisher.states[-1].models[0].version == "1.0.0"


def test_an_already_installed_model_is_not_touched_again(device: Device) -> None:
    with file_server(Behaviour(data=V1.data)) as url:
        install(device, V1, 1, url)
        refreshes = device.tuf.refreshes
        device.runner().handle_desired(device.envelope(2, [V1.target(url)]))
    assert device.publisher.phases(2) == []
    assert device.tuf.refreshes == refreshes  # no TUF round trip for nothing
    assert AgentStore.load(device.layout.store).last_seq == 2


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda d, u: d.envelope(1, [V1.target(u)], device_id="dev-2"), "wrong_device"),
        (
            lambda d, u: d.envelope(
                1,
                [V1.target(u)],
                issued_at=datetime.now(UTC) - timedelta(days=3),
                expires_in=timedelta(days=1),
            ),
            "command_expired",
        ),
        (
            lambda d, u: Device(d.root.parent / "other").envelope(1, [V1.target(u)]),
            "signature_invalid",
        ),
        (lambda d, u: b'{"payload": 1}', "malformed"),
    ],
)
def test_envelope_refusals_change_nothing(device: Device, make, code: str) -> None:
    runner = device.runner()
    runner.handle_desired(make(device, "http://127.0.0.1:9/x"))
    (event,) = device.publisher.events
    assert (event.phase, event.code, event.model) == ("rejected", code, None)
    assert not device.layout.store.exists()
    assert device.tuf.refreshes == 0


def test_expiry_is_judged_against_the_last_trusted_time(device: Device) -> None:
    # given a device that accepted a command issued "now" ...
    with file_server(Behaviour(data=V1.data)) as url:
        install(device, V1, 1, url)
        # ... whose clock is later reset by two days
        runner = device.runner(clock=datetime.now(UTC) - timedelta(days=2))
        stale = device.envelope(
            2, [V2.target(url)], issued_at=datetime.now(UTC) - timedelta(days=1, hours=12)
        )
        runner.handle_desired(stale)
    assert device.publisher.events[-1].code == "command_expired"


@pytest.mark.parametrize(
    ("override", "custom", "code"),
    [
        ({"sha256": "0" * 64}, {}, "director_image_mismatch"),
        ({"length": 5}, {}, "director_image_mismatch"),
        ({"release_counter": 3}, {}, "director_image_mismatch"),
        (
            {"hardware": "esp32s3-int8", "path": "models/kws/2.0.0/esp32s3-int8/model.tflite"},
            {},
            "hw_mismatch",
        ),
        (
            {"path": "models/kws/2.0.1/linux-x86_64-fp32/model.tflite", "version": "2.0.1"},
            {},
            "director_image_mismatch",
        ),
        ({}, {"hardware": "jetson-orin-fp16"}, "hw_mismatch"),
    ],
)
def test_model_refusals(device: Device, override, custom, code) -> None:
    release = Release("2.0.0", 2, V2.data, custom=custom)
    device.tuf = FakeTuf([V1, release])
    with file_server(Behaviour(data=V1.data)) as url:
        install(device, V1, 1, url)
        device.runner().handle_desired(device.envelope(2, [release.target(url, **override)]))
    assert [(e.phase, e.code) for e in device.publisher.events if e.seq == 2] == [
        ("rejected", code)
    ]
    assert device.current_bytes() == V1.data


def test_downgrade_below_the_floor_is_refused(device: Device) -> None:
    fix = Release("2.0.0", 2, V2.data, floor=2)
    device.tuf = FakeTuf([V1, fix])
    with file_server(Behaviour(data=fix.data)) as url:
        install(device, fix, 1, url)
        device.runner().handle_desired(device.envelope(2, [V1.target(url)]))
    assert device.publisher.events[-1].code == "downgrade_refused"
    assert AgentStore.load(device.layout.store).models["kws"].floor == 2


def test_a_tuf_failure_is_reported_with_its_code(device: Device) -> None:
    from tuf.api.exceptions import BadVersionNumberError

    def rolled_back_repo() -> FakeTuf:
        raise BadVersionNumberError("timestamp version went backwards")

    device.tuf = rolled_back_repo  # type: ignore[assignment]
    device.runner().handle_desired(device.envelope(1, [V1.target("http://127.0.0.1:9/x")]))
    (event,) = device.publisher.events
    assert (event.phase, event.code, event.model) == ("rejected", "rollback_detected", "kws")


def test_a_download_that_fails_ends_failed_and_cleans_up(device: Device) -> None:
    with file_server(Behaviour(data=tflite(b"other", len(V1.data)))) as url:
        device.runner().handle_desired(device.envelope(1, [V1.target(url)]))
    assert device.publisher.phases(1)[-1] == "failed"
    assert device.publisher.events[-1].code == "hash_mismatch"
    assert device.current_bytes() is None
    assert list(device.layout.downloads.iterdir()) == []
    assert not device.layout.journal.exists()


# --- recovery ----------------------------------------------------------------------


def job_for(release: Release, url: str, *, slot: Slot, previous: Slot | None) -> Job:
    return Job(
        seq=2,
        target=release.target(url),
        format=release.fmt,
        floor=release.floor,
        selftest=None,
        slot=slot,
        previous_slot=previous,
    )


@pytest.mark.parametrize(
    ("status", "event"),
    [
        (Status.TRIAL, DownloadDone()),
        (Status.DOWNLOADING, TrialPassed()),
        (Status.COMMITTED, Swapped()),
    ],
    ids=str,
)
def test_an_invalid_event_leaves_state_and_journal_alone(
    device: Device, status: Status, event: Event
) -> None:
    # given an update journaled mid-way
    state = AgentState(
        status=status, job=job_for(V2, "http://127.0.0.1:9/x", slot=Slot.B, previous=Slot.A)
    )
    Journal(device.layout.journal).save(state)
    journaled = device.layout.journal.read_bytes()
    runner = device.runner()
    runner.state = state

    # when an event that state does not accept reaches the runner
    with pytest.raises(InvalidTransition, match=f"not valid in state {status}"):
        runner._feed(event)

    # then nothing moved: not the state, not the journal, and nothing was reported
    assert runner.state == state
    assert device.layout.journal.read_bytes() == journaled
    assert device.publisher.events == []


def test_recovery_resumes_a_partial_download_with_range(device: Device) -> None:
    behaviour = Behaviour(data=V2.data)
    with file_server(behaviour) as url:
        job = job_for(V2, url, slot=Slot.A, previous=None)
        Journal(device.layout.journal).save(AgentState(status=Status.DOWNLOADING, job=job))
        device.layout.part(V2.sha256).write_bytes(V2.data[:30_000])

        device.runner().recover()

    assert behaviour.requests[0]["range"] == "bytes=30000-"
    assert device.current_bytes() == V2.data
    assert device.publisher.phases(2)[-1] == "committed"
    assert not device.layout.journal.exists()


@pytest.mark.parametrize("status", [Status.SWAPPED, Status.TRIAL])
def test_recovery_rolls_back_a_swap_that_never_committed(device: Device, status: Status) -> None:
    # given v1 live in slot a, v2 staged in b and `current` already swapped to b
    with file_server(Behaviour(data=V1.data)) as url:
        install(device, V1, 1, url)
    job = job_for(V2, "http://127.0.0.1:9/x", slot=Slot.B, previous=Slot.A)
    slot_b = device.layout.models / "kws" / "slots" / "b"
    slot_b.mkdir(parents=True)
    (slot_b / "model.tflite").write_bytes(V2.data)
    os.replace(_symlink(device, "slots/b"), device.layout.models / "kws" / "current")
    Journal(device.layout.journal).save(AgentState(status=status, job=job))

    # when the agent starts again
    device.runner().recover()

    # then v1 is back, and the server is told why
    assert device.current_bytes() == V1.data
    event = device.publisher.events[-1]
    assert (event.seq, event.phase, event.code) == (2, "rolled_back", "health_check_failed")
    assert not slot_b.exists()
    installed = AgentStore.load(device.layout.store).models["kws"].installed
    assert installed is not None
    assert installed.version == "1.0.0"
    assert not device.layout.journal.exists()


def test_recovery_of_a_first_install_that_never_committed_removes_current(device: Device) -> None:
    job = job_for(V1, "http://127.0.0.1:9/x", slot=Slot.A, previous=None)
    slot_a = device.layout.models / "kws" / "slots" / "a"
    slot_a.mkdir(parents=True)
    (slot_a / "model.tflite").write_bytes(V1.data)
    os.replace(_symlink(device, "slots/a"), device.layout.models / "kws" / "current")
    Journal(device.layout.journal).save(AgentState(status=Status.TRIAL, job=job))

    device.runner().recover()

    assert not (device.layout.models / "kws" / "current").is_symlink()
    assert device.publisher.phases() == ["rolled_back"]


def test_recovery_restages_a_half_staged_slot(device: Device) -> None:
    # given a complete verified download and a slot left half-written by a crash
    job = job_for(V2, "http://127.0.0.1:9/x", slot=Slot.A, previous=None)
    device.layout.part(V2.sha256).write_bytes(V2.data)
    slot_a = device.layout.models / "kws" / "slots" / "a"
    slot_a.mkdir(parents=True)
    (slot_a / "model.tflite").write_bytes(V2.data[:100])
    (slot_a / "junk").write_bytes(b"x")
    Journal(device.layout.journal).save(AgentState(status=Status.STAGED, job=job))

    device.runner().recover()

    assert device.current_bytes() == V2.data
    assert sorted(p.name for p in slot_a.iterdir()) == ["model.tflite"]
    assert device.publisher.phases()[-1] == "committed"


def test_recovery_finishes_a_commit(device: Device) -> None:
    with file_server(Behaviour(data=V1.data)) as url:
        install(device, V1, 1, url)
    job = job_for(V2, "http://127.0.0.1:9/x", slot=Slot.B, previous=Slot.A)
    slot_b = device.layout.models / "kws" / "slots" / "b"
    slot_b.mkdir(parents=True)
    (slot_b / "model.tflite").write_bytes(V2.data)
    os.replace(_symlink(device, "slots/b"), device.layout.models / "kws" / "current")
    Journal(device.layout.journal).save(AgentState(status=Status.COMMITTED, job=job))

    device.runner().recover()

    record = AgentStore.load(device.layout.store).models["kws"]
    assert record.installed is not None
    assert record.installed.version == "2.0.0"
    assert record.previous is not None
    assert record.previous.version == "1.0.0"
    assert device.publisher.phases()[-1] == "committed"


def test_recovery_finishes_a_failure(device: Device) -> None:
    job = job_for(V2, "http://127.0.0.1:9/x", slot=Slot.A, previous=None)
    device.layout.part(V2.sha256).write_bytes(b"partial")
    failure = Failure(code=ErrorCode.DOWNLOAD_TIMEOUT, detail="stalled")
    Journal(device.layout.journal).save(AgentState(status=Status.FAILED, job=job, failure=failure))

    device.runner().recover()

    assert [(e.phase, e.code) for e in device.publisher.events] == [("failed", "download_timeout")]
    assert not device.layout.part(V2.sha256).exists()


def test_a_corrupt_journal_is_set_aside_and_current_reconciled(device: Device) -> None:
    with file_server(Behaviour(data=V1.data)) as url:
        install(device, V1, 1, url)
    device.layout.journal.write_text("{not json")
    (device.layout.models / "kws" / "current").unlink()

    device.runner().recover()

    assert device.layout.journal.with_suffix(".corrupt").exists()
    assert device.current_bytes() == V1.data


def _symlink(device: Device, target: str) -> Path:
    tmp = device.layout.models / "kws" / ".tmp-link"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    return tmp


# --- a crash after every action ----------------------------------------------------

# accepted, downloading, Download, downloaded, Verify, verified, Stage, staged, Swap,
# swapped, trial, RunTrial, Commit, committed, PublishState (progress reports, whose
# number depends on timing, are not counted)
HAPPY_PATH_ACTIONS = 15


def run_until_crash(device: Device, envelope: bytes, crash_at: int) -> bool:
    """Run the update, raising Crash before action number `crash_at`; True if it crashed."""
    runner = device.runner()
    original = runner._apply
    count = {"n": 0}

    def apply(action):
        if isinstance(action, Report) and action.progress:
            return original(action)
        if count["n"] == crash_at:
            raise Crash
        count["n"] += 1
        return original(action)

    runner._apply = apply  # type: ignore[method-assign]
    try:
        runner.handle_desired(envelope)
    except Crash:
        return True
    return False


def test_crash_points_cover_the_whole_update(device: Device) -> None:
    with file_server(Behaviour(data=V1.data)) as url:
        install(device, V1, 1, url)
    with file_server(Behaviour(data=V2.data)) as url:
        envelope = device.envelope(2, [V2.target(url)])
        assert run_until_crash(device, envelope, HAPPY_PATH_ACTIONS - 1)
    fresh = Device(device.root.parent / "fresh")
    fresh.tuf = FakeTuf([V1, V2])
    with file_server(Behaviour(data=V1.data)) as url:
        install(fresh, V1, 1, url)
    with file_server(Behaviour(data=V2.data)) as url:
        assert not run_until_crash(fresh, fresh.envelope(2, [V2.target(url)]), HAPPY_PATH_ACTIONS)


@pytest.mark.parametrize("crash_at", range(HAPPY_PATH_ACTIONS))
def test_a_crash_before_any_action_recovers_to_a_consistent_device(
    device: Device, crash_at: int
) -> None:
    with file_server(Behaviour(data=V1.data)) as url:
        install(device, V1, 1, url)
    with file_server(Behaviour(data=V2.data)) as url:
        envelope = device.envelope(2, [V2.target(url)])
        assert run_until_crash(device, envelope, crash_at)
        journaled = Journal(device.layout.journal).load().status

        # the agent restarts: recovery, then the broker redelivers the retained envelope
        runner = device.runner()
        runner.recover()
        runner.handle_desired(envelope)

    live = device.current_bytes()
    store = AgentStore.load(device.layout.store)
    record = store.models["kws"]
    assert record.installed is not None
    if journaled in (Status.SWAPPED, Status.TRIAL):
        assert live == V1.data  # a swap without a passed trial is never kept
        assert device.publisher.phases(2)[-1] == "rolled_back"
    else:
        assert live == V2.data
        assert device.publisher.phases(2)[-1] == "committed"
    # the store always describes what `current` serves
    assert (
        live
        == (
            device.layout.models / "kws" / "slots" / record.installed.slot / "model.tflite"
        ).read_bytes()
    )
    assert not device.layout.journal.exists()
    assert list(device.layout.downloads.iterdir()) == []
    assert json.loads(device.layout.store.read_text())["last_seq"] == 2


def test_stopping_mid_download_leaves_a_journal_that_resumes(device: Device) -> None:
    from device_agent.download import Interrupted

    behaviour = Behaviour(data=V2.data, throttle=(4096, 0.01))
    with file_server(behaviour) as url:
        runner = device.runner()
        runner.publisher = device.publisher
        runner.config = replace(runner.config, progress_event_interval_s=0.0)
        original = runner._feed

        def feed(event):
            # SIGTERM arrives once the first progress is reported
            if type(event).__name__ == "DownloadProgress" and event.done:
                runner.stop.set()
            return original(event)

        runner._feed = feed  # type: ignore[method-assign]
        with pytest.raises(Interrupted):
            runner.handle_desired(device.envelope(2, [V2.target(url)]))
        assert Journal(device.layout.journal).load().status is Status.DOWNLOADING
        kept = device.layout.part(V2.sha256).stat().st_size
        assert 0 < kept < len(V2.data)

        behaviour.throttle = None
        device.runner().recover()

    assert behaviour.requests[-1]["range"] == f"bytes={kept}-"
    assert device.current_bytes() == V2.data


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        ("BadVersionNumberError", "rollback_detected"),
        ("EqualVersionNumberError", "rollback_detected"),
        ("ExpiredMetadataError", "metadata_expired"),
        ("UnsignedMetadataError", "signature_invalid"),
        ("LengthOrHashMismatchError", "hash_mismatch"),
        ("DownloadLengthMismatchError", "metadata_too_large"),
        ("SlowRetrievalError", "download_timeout"),
        ("DownloadError", "download_failed"),
        ("RepositoryError", "malformed"),
    ],
)
def test_tuf_errors_keep_their_meaning(exc: str, code: str) -> None:
    from tuf.api import exceptions

    from device_agent.verify import tuf_error_code

    assert tuf_error_code(getattr(exceptions, exc)("x")) == code
    assert tuf_error_code(exceptions.DownloadHTTPError("x", 503)) == "download_failed"
    assert tuf_error_code(OSError("disk")) == "download_failed"


def test_several_models_install_one_after_another_and_a_refused_one_stays_out(
    device: Device,
) -> None:
    vad = Release("0.3.0", 1, tflite(b"vad"), name="vad")
    asr = Release("1.0.0", 1, tflite(b"asr"), name="asr")
    device.tuf = FakeTuf([V1, vad])  # asr was never released through TUF
    with (
        file_server(Behaviour(data=V1.data)) as kws_url,
        file_server(Behaviour(data=vad.data)) as vad_url,
    ):
        device.runner().handle_desired(
            device.envelope(1, [V1.target(kws_url), vad.target(vad_url), asr.target(vad_url)])
        )
    done = [(e.model, e.phase, e.code) for e in device.publisher.events if e.phase != "downloading"]
    assert ("asr", "rejected", "director_image_mismatch") in done
    assert [m for m, p, _ in done if p == "committed"] == ["kws", "vad"]
    assert device.current_bytes() == V1.data
    assert device.current_bytes("vad") == vad.data
    assert device.current_bytes("asr") is None
    assert [m.name for m in device.publisher.states[-1].models] == ["kws", "vad"]
