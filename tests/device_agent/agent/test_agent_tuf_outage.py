"""A TUF repository that cannot be reached within metadata_deadline_s (issue 16): the
desired state gets no verdict and no event, and is judged again later, so the device is
not wedged on it and the server never hears of a failure that was an outage.
(The retries within the deadline: tests/device_agent/test_tuf_fetch.py.)"""

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_device import Device, FakeTuf, Release, tflite
from agent_http import Behaviour, file_server

from device_agent import runner as runner_module
from device_agent.protocol.errors import ErrorCode
from device_agent.store import AgentStore
from device_agent.verify import TargetLookup, TufUnavailable

V1 = Release("1.0.0", 1, tflite(b"v1"))


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        done.wait(0.02)
    return predicate()


def test_a_desired_state_whose_repository_is_unavailable_is_judged_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "UNAVAILABLE_RETRY_S", 0.05)
    device = Device(tmp_path / "agent")
    repository = FakeTuf([V1])
    outages = [2]  # the first two refreshes find no server within their deadline

    def tuf() -> TargetLookup:
        if outages[0]:
            outages[0] -= 1
            raise TufUnavailable(ErrorCode.DOWNLOAD_FAILED, "repository unavailable for 120s")
        return repository()

    device.tuf = tuf  # type: ignore[assignment]
    runner = device.runner()
    worker = threading.Thread(target=runner.run)
    worker.start()
    try:
        with file_server(Behaviour(data=V1.data)) as url:
            runner.offer_desired(device.envelope(1, [V1.target(url)]))
            # then once the repository answers, the same desired state is installed
            assert _wait(lambda: "committed" in device.publisher.phases(1))
    finally:
        runner.stop.set()
        worker.join(10)
    assert outages == [0]
    # and the outage was never reported as a refusal or a failure
    assert device.publisher.phases(1) == [
        "accepted",
        "downloading",
        "downloaded",
        "verified",
        "staged",
        "swapped",
        "trial",
        "committed",
    ]
    assert AgentStore.load(device.layout.store).last_seq == 1


def test_an_unavailable_repository_leaves_the_desired_state_unjudged(tmp_path: Path) -> None:
    device = Device(tmp_path / "agent")

    def tuf() -> TargetLookup:
        raise TufUnavailable(ErrorCode.DOWNLOAD_TIMEOUT, "no answer for 120s")

    device.tuf = tuf  # type: ignore[assignment]
    runner = device.runner()
    envelope = device.envelope(1, [V1.target("http://127.0.0.1:9/x")])
    runner.handle_desired(envelope)
    assert device.publisher.events == []
    assert AgentStore.load(device.layout.store).last_seq is None  # not taken as accepted
    assert runner._later is not None
    assert runner._later[0] == envelope  # judged again later
