"""The same bytes published again under a new version (the quick start's printed
`fleetctl publish` hint does this): a device already running those bytes records the new
version without downloading anything, reports it committed and in its state, so the
rollout of it completes instead of waiting at `notified` for the device timeout.

A real `fleet-agent run` process against the rig's TUF repository (agent_rig.py), in which
V1's file is published a second time as 7.0.0.
"""

from collections.abc import Iterator
from typing import Any

import pytest
from agent_rig import TERMINAL, V1, V2, Release, Rig, open_rig

pytestmark = pytest.mark.django_db

V1_AGAIN = Release("7.0.0", 7, V1.data)  # V1's file, a new version and release counter


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, django_db_setup: Any, django_db_blocker: Any
) -> Iterator[Rig]:
    with open_rig(tmp_path_factory.mktemp("same-bytes"), django_db_blocker, (V1_AGAIN,)) as built:
        yield built


def test_the_same_bytes_under_a_new_version_commit_without_a_download(rig: Rig) -> None:
    assert V1_AGAIN.sha256 == V1.sha256
    with rig.case("same-bytes") as agent:
        # given a device running V1 (1.0.0) in slot a
        agent.start()
        agent.assert_runs(V1, "a")
        served_before = len(agent.mirror.artifact_requests())

        # when the director asks for 7.0.0, whose file is V1's, under a rollout
        agent.send(agent.envelope(2, [agent.target(V1_AGAIN, rollout_id="r-9", arm=None)]))

        # then it reports the rollout's version committed, having downloaded nothing
        final = agent.wait_event(2, TERMINAL)
        assert (final.phase, final.code, final.rollout_id) == ("committed", None, "r-9")
        phases = [e.phase for e in agent.events() if e.seq == 2]
        assert phases == ["accepted", "committed"]
        assert len(agent.mirror.artifact_requests()) == served_before
        # and its state says it runs 7.0.0, from the same file in the same slot
        agent.wait_settled(2)
        (model,) = agent.states()[-1].models
        assert (model.name, model.version, model.release_counter, model.slot) == (
            "kws",
            "7.0.0",
            7,
            "a",
        )
        agent.assert_runs(V1_AGAIN, "a")
        installed = agent.store()["models"]["kws"]["installed"]
        assert (installed["filename"], installed["rollout_id"]) == ("model.tflite", "r-9")
        # the version before it is still the one to fall back to: none was displaced
        assert agent.store()["models"]["kws"]["previous"] is None


def test_a_real_update_after_a_relabel_still_downloads_and_keeps_the_relabelled_version(
    rig: Rig,
) -> None:
    with rig.case("same-bytes-then-v2") as agent:
        agent.start()
        agent.send(agent.envelope(2, [agent.target(V1_AGAIN)]))
        agent.wait_event(2, TERMINAL)
        agent.wait_settled(2)

        # when a different file comes next, it is downloaded and swapped in as usual
        agent.send(agent.envelope(3, [agent.target(V2)]))
        final = agent.wait_event(3, TERMINAL, timeout=60)
        assert final.phase == "committed"
        agent.wait_settled(3)
        agent.assert_runs(V2, "b")
        # and the one it replaced, to fall back to, is 7.0.0 in slot a
        previous = agent.store()["models"]["kws"]["previous"]
        assert (previous["version"], previous["slot"]) == ("7.0.0", "a")
