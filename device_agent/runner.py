"""The agent's runner: all the IO around the pure state machine (device_agent/state.py).

For each event it asks `state.next_step` for the next state and actions, journals
the state (journal.json) *before* applying any action, then applies the actions in
order; the one action that does work (download, verify, stage, swap, trial, roll
back) yields the next event. On start it loads the journal and sends `Recover`, so
an interrupted download resumes, a swap that never committed is rolled back and a
half-staged slot is staged again. One thread does all of this; the MQTT network
thread only queues incoming `desired` payloads (offer_desired). A newer desired state
(signed, for this device, seq above the one being carried out) pre-empts a download in
progress: the plan is dropped without an event, the part kept for a plan that wants
the same bytes.

Every event is on disk (`events.json`, device_agent/delivery.py) before the
publisher's `event()` returns, and is sent until the server confirms it; so a job's
final event (committed, failed, rolled_back) is kept before the journal lets go of the
job, and a crash before that reports it again, which the outbox recognises as a repeat.

`telemetry_tags` is what the metrics thread (metrics_server.py) tags applications'
samples with; the runner replaces the whole mapping whenever the store changes what
they say, so the other thread only ever reads a finished one.
"""

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import urllib3

from device_agent import AGENT_VERSION
from device_agent.config import AgentConfig, Layout
from device_agent.download import (
    DownloadError,
    DownloadOptions,
    Interrupted,
    backoff_delay,
    download,
    verify_file,
)
from device_agent.journal import Journal, JournalError
from device_agent.protocol.envelope import read_public_key
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.fsutil import remove_durably
from device_agent.protocol.messages import (
    MAX_DETAIL_CHARS,
    ModelState,
    Phase,
    ReportedState,
    UpdateEvent,
)
from device_agent.slots import ModelSlots
from device_agent.state import (
    IDLE,
    TERMINAL,
    Action,
    AgentState,
    Commit,
    Continue,
    DesiredAccepted,
    Download,
    DownloadDone,
    DownloadFailed,
    DownloadProgress,
    Event,
    Job,
    PublishState,
    Recover,
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
from device_agent.store import AgentStore, Installed
from device_agent.telemetry import ModelTags, tags_from_store
from device_agent.testhooks import crashpoint
from device_agent.trial import run_trial
from device_agent.verify import (
    Accepted,
    Ignored,
    Refused,
    Unavailable,
    VerifyContext,
    check_envelope,
    envelope_digest,
    evaluate,
    tuf_updater,
)

log = logging.getLogger(__name__)

# How often a desired state refused as issued_in_future is judged again.
FUTURE_RETRY_S = 30.0
# A desired state whose TUF repository did not answer within metadata_deadline_s is
# judged again after this, doubling (jittered) up to the cap while the outage lasts.
UNAVAILABLE_RETRY_S = 30.0
UNAVAILABLE_RETRY_MAX_S = 600.0


class Publisher(Protocol):
    """Where events and the reported state go (MQTT in production, a list in tests).

    `event()` returns once the event is kept for delivery (on disk, in production).
    """

    def event(self, event: UpdateEvent) -> None: ...

    def state(self, state: ReportedState) -> None: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


class _PublishStateRequest:
    """Queued by the MQTT thread on (re)connect: publish the retained state."""


PUBLISH_STATE = _PublishStateRequest()


class Runner:
    """Drives updates for one agent directory."""

    def __init__(
        self,
        directory: Path,
        config: AgentConfig,
        *,
        publisher: Publisher,
        clock: Callable[[], datetime] = utc_now,
        stop: threading.Event | None = None,
    ) -> None:
        self.layout = Layout(directory)
        self.layout.make_dirs()
        self.config = config
        self.publisher = publisher
        self.clock = clock
        self.stop = stop or threading.Event()
        self.store = AgentStore.load(self.layout.store)
        self.telemetry_tags: Mapping[str, ModelTags] = tags_from_store(self.store)
        self.journal = Journal(self.layout.journal)
        self.state: AgentState = IDLE
        self.director_key = read_public_key(self.layout.director_key)
        self.tuf = tuf_updater(
            trust_root=self.layout.trust_root,
            metadata_dir=self.layout.tuf,
            tuf_url=config.tuf_url,
            socket_timeout_s=config.download_stall_s,
            deadline_s=config.metadata_deadline_s,
            backoff_s=config.download_backoff_s,
            backoff_max_s=config.download_backoff_max_s,
            reference_time=self.trusted_now,
            ca_certs=self.layout.server_ca_file(),
            sleep=self._sleep,
            interrupted=self._interrupted,
        )
        self.inbox: queue.Queue[bytes | _PublishStateRequest] = queue.Queue()
        # The newest desired payload offered and not yet taken from the inbox, and what
        # judging it for pre-emption said (by digest): see _superseded().
        self._offered_lock = threading.Lock()
        self._offered: bytes | None = None
        self._judged: tuple[str, bool] = ("", False)
        self.http = urllib3.PoolManager(ca_certs=self.layout.server_ca_file())
        self._accepted: Accepted | None = None
        # A desired state refused as issued in the future, or whose TUF repository was
        # unavailable, and when to judge it again; how many outages in a row.
        self._later: tuple[bytes, float] | None = None
        self._unavailable = 0
        # The digest of the envelope being judged: its retained copy does not pre-empt it.
        self._judging = ""
        # Last sign of life of the update loop, read by the systemd watchdog thread.
        self.last_alive = time.monotonic()

    # --- driving ---------------------------------------------------------------------

    def recover(self) -> None:
        """Resume from the journal, then make `current` agree with the store."""
        try:
            self.state = self.journal.load()
        except JournalError:
            log.exception("the journal is unreadable; moving it aside")
            os.replace(self.layout.journal, self.layout.journal.with_suffix(".corrupt"))
            self.state = IDLE
        if self.state.status is not Status.IDLE:
            log.warning("recovering an update interrupted in state %s", self.state.status)
            self._drive(Recover())
        self._reconcile()

    def handle_desired(self, envelope: bytes) -> None:
        """Judge one `desired` payload and carry out what it asks (blocking)."""
        if self.state.status is not Status.IDLE:
            raise RuntimeError(f"desired state handled while {self.state.status}")
        self._later = None  # a newer envelope, or this one again
        self._judging = envelope_digest(envelope)
        try:
            outcome = evaluate(envelope, self._context(), self.store)
        finally:
            self._judging = ""
        if isinstance(outcome, Unavailable):
            # An outage is no verdict: no event (a server that comes back within the
            # deadline never hears of it); the same envelope is judged again later.
            self._unavailable += 1
            delay = backoff_delay(self._unavailable, UNAVAILABLE_RETRY_S, UNAVAILABLE_RETRY_MAX_S)
            log.warning(
                "desired seq %d not judged: %s %s; again in %.0fs",
                outcome.seq,
                outcome.code,
                outcome.detail,
                delay,
            )
            self._later = (envelope, time.monotonic() + delay)
            return
        self._unavailable = 0
        if isinstance(outcome, Ignored):
            log.debug("retained desired seq %d seen again; nothing to do", outcome.seq)
            return
        if isinstance(outcome, Accepted):
            self._accepted = outcome
            self._drive(outcome.event)
        else:
            log.warning(
                "refused desired state: %s %s", outcome.rejection.code, outcome.rejection.detail
            )
            if outcome.rejection.code is ErrorCode.ISSUED_IN_FUTURE:
                # Not bad, maybe early (our clock may be behind): try it again later. The
                # repeated refusal is the same event, which the delivery does not resend.
                self._later = (envelope, time.monotonic() + FUTURE_RETRY_S)
            self._drive(outcome)

    def offer_desired(self, envelope: bytes) -> None:
        """Queue a `desired` payload (the MQTT thread); it may pre-empt a download."""
        with self._offered_lock:
            self._offered = envelope
        self.inbox.put(envelope)

    def run(self) -> None:
        """Process queued messages until `stop` is set (call recover() first)."""
        while not self.stop.is_set():
            self.last_alive = time.monotonic()
            try:
                item = self.inbox.get(timeout=0.5)
            except queue.Empty:
                self._retry_later()
                continue
            if isinstance(item, _PublishStateRequest):
                self.publish_state()
            else:
                with self._offered_lock:
                    if self._offered is item:
                        self._offered = None
                self.handle_desired(item)

    def _superseded(self) -> bool:
        """Whether a desired state newer than the one being carried out is waiting.

        Judged by the director's half of verification (signature, device, seq, expiry),
        once per payload: the retained copy of the current one, or anything forged,
        does not stop a download.
        """
        with self._offered_lock:
            envelope = self._offered
        if envelope is None:
            return False
        digest = envelope_digest(envelope)
        if digest == self._judging:
            return False  # its retained copy again, redelivered on a reconnect
        if digest != self._judged[0]:
            try:
                newer = not isinstance(
                    check_envelope(envelope, self._context(), self.store), Ignored
                )
            except Refused:
                newer = False
            self._judged = (digest, newer)
        return self._judged[1]

    def _interrupted(self) -> bool:
        return self.stop.is_set() or self._superseded()

    def _sleep(self, seconds: float) -> None:
        # Backoff between download attempts, cut short by a stop or a newer desired state.
        deadline = time.monotonic() + seconds
        while not self._interrupted():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.stop.wait(min(remaining, 0.2))

    def _retry_later(self) -> None:
        if self._later is not None and time.monotonic() >= self._later[1]:
            self.handle_desired(self._later[0])

    def trusted_now(self) -> datetime:
        """The clock, but never before the newest issued_at this device has accepted."""
        now = self.clock()
        trusted = self.store.last_trusted_time
        return now if trusted is None else max(now, trusted)

    def _context(self) -> VerifyContext:
        return VerifyContext(
            device_id=self.config.device_id,
            hardware=self.config.hardware,
            director_key=self.director_key,
            models_dir=self.layout.models,
            now=self.clock(),
            tuf=self.tuf,
            max_issued_ahead=None
            if self.config.max_issued_ahead_s is None
            else timedelta(seconds=self.config.max_issued_ahead_s),
        )

    def _drive(self, event: Event | None) -> None:
        while event is not None:
            event = self._feed(event)
            if event is None and self.state.status in TERMINAL:
                event = Continue()

    def _feed(self, event: Event) -> Event | None:
        new_state, actions = next_step(self.state, event)
        if new_state != self.state:
            self.journal.save(new_state)  # before any action: see state.py
            crashpoint(f"journal:{new_state.status}")
        self.state = new_state
        if isinstance(event, DesiredAccepted):
            self._record_accepted()
            crashpoint("accepted:recorded")
        follow: Event | None = None
        for action in actions:
            produced = self._apply(action)
            if produced is not None:
                follow = produced
        return follow

    def _record_accepted(self) -> None:
        # After the jobs are journaled: a crash in between re-accepts the retained
        # envelope on restart, and jobs already done are skipped as installed.
        accepted, self._accepted = self._accepted, None
        if accepted is None:
            return
        desired = accepted.desired
        store = self.store
        store.last_seq = desired.seq
        store.last_digest = accepted.digest
        store.last_trusted_time = max(
            store.last_trusted_time or desired.issued_at, desired.issued_at
        )
        for entry in desired.models:
            # A model already installed stays, but may now run under another rollout and
            # arm (an A/B arm that keeps the baseline version): its telemetry says so.
            record = store.models.get(entry.name)
            installed = record.installed if record else None
            if record and installed and installed.sha256 == entry.sha256:
                record.installed = replace(installed, rollout_id=entry.rollout_id, arm=entry.arm)
        store.save()
        self.telemetry_tags = tags_from_store(store)

    # --- actions ---------------------------------------------------------------------

    def _apply(self, action: Action) -> Event | None:
        if isinstance(action, Report):
            self._report(action)
            return None
        if isinstance(action, PublishState):
            self.publish_state()
            return None
        if isinstance(action, Download):
            return self._download(action.job)
        if isinstance(action, Verify):
            return self._verify(action.job)
        if isinstance(action, Stage):
            return self._stage(action.job)
        if isinstance(action, Swap):
            return self._swap(action.job)
        if isinstance(action, RunTrial):
            return self._trial(action.job)
        if isinstance(action, Commit):
            self._commit(action.job)
            return None
        if isinstance(action, RollBack):
            return self._roll_back(action.job)
        self._discard(action.job)
        return None

    def _report(self, report: Report) -> None:
        if report.model is not None and report.code is not ErrorCode.REPLAYED_COMMAND:
            record = self.store.models.get(report.model)
            if record is not None:
                record.status = report.phase
        detail = report.detail[:MAX_DETAIL_CHARS]
        log.info(
            "event seq=%d model=%s phase=%s%s%s",
            report.seq,
            report.model,
            report.phase,
            f" progress={report.progress}" if report.progress is not None else "",
            f" code={report.code} {detail}" if report.code else "",
        )
        event = UpdateEvent(
            seq=report.seq,
            rollout_id=report.rollout_id,
            model=report.model,
            phase=report.phase,
            progress=report.progress,
            code=report.code,
            detail=detail,
            ts=self.clock(),
        )
        try:
            self.publisher.event(event)
        except Exception:
            log.exception("could not publish an event")
        if report.phase in (Phase.COMMITTED, Phase.FAILED, Phase.ROLLED_BACK):
            crashpoint(f"report:{report.phase}")

    def publish_state(self) -> None:
        try:
            self.publisher.state(self.reported_state())
        except Exception:
            log.exception("could not publish the state")

    def reported_state(self) -> ReportedState:
        models = []
        for name, record in sorted(self.store.models.items()):
            installed = record.installed
            if installed is None:
                continue
            models.append(
                ModelState(
                    name=name,
                    version=installed.version,
                    release_counter=installed.release_counter,
                    slot=installed.slot,
                    status=record.status or Phase.COMMITTED,
                )
            )
        return ReportedState(
            agent_version=AGENT_VERSION,
            hardware=self.config.hardware,
            models=tuple(models),
            last_seq=self.store.last_seq or 0,
        )

    def _slots(self, job: Job) -> ModelSlots:
        return ModelSlots(self.layout.models, job.model)

    def _filename(self, job: Job) -> str:
        return job.target.path.rsplit("/", 1)[-1]

    def _download(self, job: Job) -> Event:
        options = DownloadOptions(
            deadline_s=self.config.download_deadline_s,
            stall_s=self.config.download_stall_s,
            attempts=self.config.download_attempts,
            backoff_s=self.config.download_backoff_s,
            backoff_max_s=self.config.download_backoff_max_s,
            reserve_bytes=self.config.disk_reserve_bytes,
            user_agent=f"fleet-agent/{AGENT_VERSION}",
            min_rate_bps=self.config.download_min_bytes_per_s,
            min_rate_window_s=self.config.download_min_rate_window_s,
            sleep=self._sleep,
            stop=self._interrupted,
        )
        # _start reported progress 0; then one event per interval at most, when it moved.
        reported = [0, time.monotonic()]

        def progress(done: int, total: int) -> None:
            now = self.last_alive = time.monotonic()
            percent = 100 * done // total if total else 100
            if percent == reported[0] or now - reported[1] < self.config.progress_event_interval_s:
                return
            reported[:] = [percent, now]
            self._feed(DownloadProgress(done=done, total=total))

        self._drop_other_parts(job)
        try:
            download(
                job.target.url,
                self.layout.part(job.target.sha256),
                sha256=job.target.sha256,
                length=job.target.length,
                options=options,
                progress=progress,
                pool=self.http,
            )
        except DownloadError as exc:
            return DownloadFailed(code=exc.code, detail=exc.detail)
        except Interrupted:
            if self.stop.is_set():
                raise  # the agent stops: the journal resumes this download next time
            log.info("a newer desired state arrived; leaving the download of %s", job.model)
            return Superseded()
        crashpoint("download:complete")
        return DownloadDone()

    def _drop_other_parts(self, job: Job) -> None:
        # One download at a time: any other part was left by a pre-empted plan.
        keep = self.layout.part(job.target.sha256)
        for part in self.layout.downloads.glob("*.part"):
            if part != keep:
                part.unlink(missing_ok=True)

    def _verify(self, job: Job) -> Event:
        try:
            verify_file(
                self.layout.part(job.target.sha256),
                sha256=job.target.sha256,
                length=job.target.length,
            )
        except DownloadError as exc:
            return VerifyFailed(code=exc.code, detail=exc.detail)
        crashpoint("verify:done")
        return Verified()

    def _stage(self, job: Job) -> Event:
        record = self.store.model(job.model)
        if record.previous is not None and record.previous.slot is job.slot:
            # The slot about to be overwritten held the version before the live one.
            record.previous = None
            self.store.save()
        try:
            self._slots(job).stage(
                job.slot, self.layout.part(job.target.sha256), self._filename(job)
            )
        except OSError as exc:
            code = ErrorCode.DISK_FULL if exc.errno == errno.ENOSPC else ErrorCode.DOWNLOAD_FAILED
            return StageFailed(code=code, detail=f"staging failed: {exc}")
        crashpoint("stage:done")
        return Staged()

    def _swap(self, job: Job) -> Event:
        try:
            self._slots(job).swap(job.slot)
        except OSError as exc:
            return SwapFailed(code=ErrorCode.HEALTH_CHECK_FAILED, detail=f"swap failed: {exc}")
        crashpoint("swap:replaced")
        return Swapped()

    def _trial(self, job: Job) -> Event:
        slots = self._slots(job)
        result = run_trial(
            slots.current_link / self._filename(job),
            fmt=job.format,
            selftest=job.selftest,
            name=job.model,
            version=job.target.version,
            hook=self.config.trial_hook,
            deadline_s=self.config.trial_deadline_s,
        )
        if result.ok:
            log.info("trial of %s %s passed: %s", job.model, job.target.version, result.detail)
            crashpoint("trial:passed")
            return TrialPassed()
        if result.code is ErrorCode.COMMIT_TIMEOUT:
            return TrialTimedOut(detail=result.detail)
        return TrialFailed(code=result.code or ErrorCode.HEALTH_CHECK_FAILED, detail=result.detail)

    def _commit(self, job: Job) -> None:
        record = self.store.model(job.model)
        if record.installed is not None and record.installed.slot is not job.slot:
            record.previous = record.installed
        target = job.target
        live = record.installed
        record.installed = Installed(
            version=target.version,
            release_counter=target.release_counter,
            sha256=target.sha256,
            length=target.length,
            slot=job.slot,
            # A relabel keeps the file in place, under the name it was installed with.
            filename=live.filename if job.relabel and live else self._filename(job),
            format=job.format,
            rollout_id=target.rollout_id,
            arm=target.arm,
        )
        record.floor = max(record.floor, job.floor)
        record.status = Phase.COMMITTED
        self.store.save()
        self.telemetry_tags = tags_from_store(self.store)
        crashpoint("commit:stored")
        remove_durably(self.layout.part(target.sha256))

    def _roll_back(self, job: Job) -> Event:
        slots = self._slots(job)
        if job.previous_slot is None:
            slots.remove_current()
        else:
            slots.swap(job.previous_slot)
        crashpoint("rollback:swapped")
        return RolledBack()

    def _discard(self, job: Job) -> None:
        remove_durably(self.layout.part(job.target.sha256))
        crashpoint("discard:part_removed")
        slots = self._slots(job)
        if slots.current() is not job.slot:
            slots.wipe(job.slot)

    def _reconcile(self) -> None:
        """At rest, `current` must point where the store says the live model is."""
        if self.state.status is not Status.IDLE:
            return
        for name, record in self.store.models.items():
            installed = record.installed
            if installed is None:
                continue
            slots = ModelSlots(self.layout.models, name)
            if slots.current() is installed.slot:
                continue
            if slots.file(installed.slot, installed.filename).is_file():
                log.warning("%s: current did not point at slot %s; repaired", name, installed.slot)
                slots.swap(installed.slot)
            else:
                log.error("%s: the installed slot %s is missing its model", name, installed.slot)
