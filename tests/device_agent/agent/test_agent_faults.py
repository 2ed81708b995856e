"""Fault injection: the agent process is SIGKILLed at every journaled transition and in
the middle of each action, then started again; it always ends on a whole model.

The kill comes from inside the agent, at a named crash point
(FLEET_AGENT_CRASH_AT, device_agent/testhooks.py), so each case dies at exactly its
point rather than whenever a timer fires. Every case starts from a copy of a device
running v1 (slot a) and is sent one update:

- `good`: v2, which passes its trial;
- `broken`: v4, which fails its trial (not a TFLite file), so the agent rolls back;
- `tampered`: v2 through a mirror that flips one byte, so the download fails.

After the restart the device must run v1 or v2 exactly as signed (`current` resolves to
a file with one of the two signed sha256), the journal must be gone, the downloads
empty, the store must describe what `current` serves, and the job's last event must be
the one the design gives for that point (committed, or rolled_back/failed with a code).
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from agent_rig import TERMINAL, V1, V2, V4_BROKEN, CaseAgent, Release, Rig, SlowLink, open_rig

# The tests use no database themselves, but the rig builds the repository in it (and
# rolls it back): the marker makes pytest-django create the test database.
pytestmark = pytest.mark.django_db

# 4 MiB v2; the mid-download kill comes once the part holds at least this much.
KILL_AFTER_BYTES = 1_000_000


@dataclass(frozen=True)
class Point:
    crash_at: str  # FLEET_AGENT_CRASH_AT
    scenario: str  # good | broken | tampered
    journaled: str | None  # the journal's status at the kill (None: no journal)
    phase: str  # the job's final event
    runs: str  # "new" or "old" model afterwards
    code: str | None = None

    @property
    def id(self) -> str:
        return f"{self.scenario}-{self.crash_at}"


RESTARTED = "health_check_failed"  # a swap whose trial never passed is rolled back

POINTS = [
    # the update that succeeds: every journal write and every action
    Point("journal:downloading", "good", "downloading", "committed", "new"),
    Point("accepted:recorded", "good", "downloading", "committed", "new"),
    Point(f"download:bytes@{KILL_AFTER_BYTES}", "good", "downloading", "committed", "new"),
    Point("download:complete", "good", "downloading", "committed", "new"),
    Point("journal:verifying", "good", "verifying", "committed", "new"),
    Point("verify:done", "good", "verifying", "committed", "new"),
    Point("journal:staged", "good", "staged", "committed", "new"),
    Point("stage:wiped", "good", "staged", "committed", "new"),
    Point("stage:done", "good", "staged", "committed", "new"),
    Point("journal:swapped", "good", "swapped", "rolled_back", "old", RESTARTED),
    Point("swap:replaced", "good", "swapped", "rolled_back", "old", RESTARTED),
    Point("journal:trial", "good", "trial", "rolled_back", "old", RESTARTED),
    Point("trial:running", "good", "trial", "rolled_back", "old", RESTARTED),
    Point("trial:passed", "good", "trial", "rolled_back", "old", RESTARTED),
    Point("journal:committed", "good", "committed", "committed", "new"),
    Point("commit:stored", "good", "committed", "committed", "new"),
    Point("report:committed", "good", "committed", "committed", "new"),
    Point("journal:idle", "good", None, "committed", "new"),
    # the update whose trial fails: the rollback, killed at each of its steps
    Point("journal:rolling_back", "broken", "rolling_back", "rolled_back", "old", RESTARTED),
    Point("rollback:swapped", "broken", "rolling_back", "rolled_back", "old", RESTARTED),
    Point("journal:rolled_back", "broken", "rolled_back", "rolled_back", "old", RESTARTED),
    Point("discard:part_removed", "broken", "rolled_back", "rolled_back", "old", RESTARTED),
    Point("report:rolled_back", "broken", "rolled_back", "rolled_back", "old", RESTARTED),
    # the update whose download is refused: failed, nothing changed
    Point("journal:failed", "tampered", "failed", "failed", "old", "hash_mismatch"),
    Point("discard:part_removed", "tampered", "failed", "failed", "old", "hash_mismatch"),
    Point("report:failed", "tampered", "failed", "failed", "old", "hash_mismatch"),
]


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, django_db_setup: Any, django_db_blocker: Any
) -> Iterator[Rig]:
    with open_rig(tmp_path_factory.mktemp("faults"), django_db_blocker) as built:
        yield built


def _release(point: Point) -> Release:
    return V4_BROKEN if point.scenario == "broken" else V2


def _kill_at(agent: CaseAgent, point: Point) -> None:
    agent.start({"FLEET_AGENT_CRASH_AT": point.crash_at})
    agent.send(agent.envelope(2, [agent.target(_release(point))]))
    code = agent.wait_exit(timeout=60)
    name = point.crash_at.partition("@")[0]
    assert code == -9, f"exit {code}, expected SIGKILL at {name}\n{agent.log()}"
    assert f"crash point {name} reached" in agent.log()
    assert agent.journal_status() == point.journaled


def _check_outcome(agent: CaseAgent, point: Point) -> None:
    release = _release(point)
    if point.runs == "new":
        agent.assert_runs(release, "b")
    else:
        agent.assert_runs(V1, "a")
    assert agent.current_sha256() in (V1.sha256, release.sha256)
    final = [e for e in agent.events() if e.seq == 2 and e.phase in TERMINAL][-1]
    assert (final.phase, final.code) == (point.phase, point.code), final
    if point.code:
        assert final.detail
    assert agent.store()["last_seq"] == 2


@pytest.mark.parametrize("point", POINTS, ids=lambda p: p.id)
def test_sigkill_then_restart_ends_on_a_whole_model(rig: Rig, point: Point) -> None:
    with rig.case(point.id) as agent:
        if point.scenario == "tampered":
            agent.mirror.artifact_rule.flip_at = V2.length // 2
        # given an update killed at its point
        _kill_at(agent, point)
        kept = agent.layout.part(V2.sha256)
        kept_bytes = kept.stat().st_size if kept.exists() else 0
        restarted_at = time.monotonic()

        # when the agent starts again
        agent.start()
        agent.wait_event(2, TERMINAL)
        agent.wait_settled(2)

        # then
        _check_outcome(agent, point)
        fetched = agent.mirror.artifact_bytes_since(restarted_at)
        if point.crash_at.startswith("download:bytes"):
            assert KILL_AFTER_BYTES <= kept_bytes < V2.length
            remaining = V2.length - kept_bytes
            assert 0 < fetched <= 1.05 * remaining, (fetched, remaining)
            (resumed, *_) = [r for r in agent.mirror.artifact_requests() if r.at > restarted_at]
            assert resumed.range_start == kept_bytes
        if point.crash_at == "download:complete":
            assert kept_bytes == V2.length
            assert fetched == 0


def test_a_second_kill_right_after_recovery_loses_no_final_event(rig: Rig) -> None:
    # given an update killed once its commit was journaled
    with rig.case("twice") as agent:
        _kill_at(agent, Point("journal:committed", "good", "committed", "committed", "new"))
        events_before = len(agent.events())

        # when it restarts while the broker is unreachable for its first two seconds (so the
        # recovery's committed event waits in paho's memory) and dies again the moment
        # the recovery has cleared the journal
        link = SlowLink(rig.broker.port, delay_s=2.0)
        try:
            config = agent.layout.root / "config.json"
            fast = config.read_text()
            config.write_text(fast.replace(f":{rig.broker.port}", f":{link.port}"))
            agent.start({"FLEET_AGENT_CRASH_AT": "journal:idle"})
            assert agent.wait_exit(timeout=60) == -9, agent.log()
            config.write_text(fast)
        finally:
            link.close()
        assert agent.journal_status() is None

        # then the committed event was on disk before the journal let go of the job ...
        pending = json.loads((agent.layout.root / "events.json").read_text())["pending"]
        assert pending[-1]["phase"] == "committed"  # nobody confirms events in this rig
        # ... and the next run sends it (until the server confirms it)
        agent.start()
        agent.wait_for(
            lambda: any(e.phase == "committed" for e in agent.events()[events_before:]),
            "the recovery's committed event",
            timeout=30,
        )
        agent.wait_settled(2)
        agent.assert_runs(V2, "b")
