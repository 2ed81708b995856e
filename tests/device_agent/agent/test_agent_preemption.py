"""A newer desired state pre-empts a download in progress within seconds; the retained
copy of the current one, or a forged one, does not. Progress events are rate-limited."""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_device import Device, FakeTuf, Release, tflite
from agent_http import Behaviour, file_server

from device_agent.runner import Runner

V1 = Release("1.0.0", 1, tflite(b"v1", 60_000))
V2 = Release("2.0.0", 2, tflite(b"v2"))
SLOW = (200, 0.1)  # 2 kB/s: V1 takes half a minute


def wait(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture
def device(tmp_path: Path) -> Device:
    device = Device(tmp_path / "agent", download_min_bytes_per_s=0.0)
    device.tuf = FakeTuf([V1, V2])
    return device


@pytest.fixture
def running(device: Device) -> Iterator[Runner]:
    runner = device.runner()
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    yield runner
    runner.stop.set()
    thread.join(10)


def test_a_newer_desired_state_pre_empts_a_slow_download(device: Device, running: Runner) -> None:
    with (
        file_server(Behaviour(data=V1.data, throttle=SLOW)) as slow,
        file_server(Behaviour(data=V2.data)) as fast,
    ):
        # given a download that would take half a minute
        running.offer_desired(device.envelope(1, [V1.target(slow)]))
        assert wait(lambda: "downloading" in device.publisher.phases(1))

        # when the director sends a newer desired state
        started = time.monotonic()
        running.offer_desired(device.envelope(2, [V2.target(fast)]))

        # then it is carried out within seconds, and the old job did not "fail"
        assert wait(lambda: "committed" in device.publisher.phases(2), 10), device.publisher.events
        assert time.monotonic() - started < 5
    assert device.publisher.phases(1) == ["accepted", "downloading"]
    assert device.current_bytes() == V2.data
    assert list(device.layout.downloads.iterdir()) == []


def test_the_part_is_resumed_when_the_newer_state_wants_the_same_bytes(
    device: Device, running: Runner
) -> None:
    slow_behaviour = Behaviour(data=V1.data, throttle=SLOW)
    fast_behaviour = Behaviour(data=V1.data)
    part = device.layout.part(V1.target("http://x/").sha256)
    with file_server(slow_behaviour) as slow, file_server(fast_behaviour) as fast:
        running.offer_desired(device.envelope(1, [V1.target(slow)]))
        assert wait(lambda: part.exists() and part.stat().st_size >= 1000)

        # when a re-signed desired state names the same model from another mirror
        running.offer_desired(device.envelope(2, [V1.target(fast)]))

        # then the bytes already here are kept: the download goes on with a Range request
        assert wait(lambda: "committed" in device.publisher.phases(2), 10)
    first = fast_behaviour.requests[0]
    assert first.get("range", "").startswith("bytes=")
    assert first["range"] != "bytes=0-"
    assert device.current_bytes() == V1.data


@pytest.mark.parametrize("kind", ["retained-copy", "forged", "replayed"])
def test_what_is_not_newer_does_not_stop_the_download(
    device: Device, running: Runner, kind: str
) -> None:
    behaviour = Behaviour(data=V1.data, throttle=(6000, 0.1))  # about a second
    with file_server(behaviour) as url:
        current = device.envelope(5, [V1.target(url)])
        running.offer_desired(current)
        assert wait(lambda: "downloading" in device.publisher.phases(5))
        if kind == "retained-copy":
            other = current
        elif kind == "forged":
            other = Device(device.root.parent / "mallory").envelope(6, [V2.target(url)])
        else:
            other = device.envelope(4, [V2.target(url)])
        running.offer_desired(other)
        assert wait(lambda: "committed" in device.publisher.phases(5), 20), device.publisher.events
    assert len(behaviour.requests) == 1
    assert device.publisher.phases(5).count("downloading") == 1


def test_a_slow_download_does_not_send_a_progress_event_every_second(
    device: Device, running: Runner
) -> None:
    # A download of about 3 s with the default interval (10 s): progress 0, then done.
    with file_server(Behaviour(data=V1.data, throttle=(2000, 0.1))) as url:
        running.offer_desired(device.envelope(1, [V1.target(url)]))
        assert wait(lambda: "committed" in device.publisher.phases(1), 20)
    downloading = [e.progress for e in device.publisher.events if e.phase == "downloading"]
    assert downloading == [0]
