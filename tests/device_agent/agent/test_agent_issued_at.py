"""A desired state issued far ahead of the device's clock is refused (issued_in_future)
and changes nothing, so one director clock jump (or a leaked director key) cannot move
the device's trusted time ahead and wedge it; it is judged again as the clock moves on.
Without a trustworthy clock (max_issued_ahead_s null) there is no bound, as documented
in docs/security.md."""

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_device import Device, FakeTuf, Release, tflite
from agent_http import Behaviour, file_server

from device_agent import runner as runner_module
from device_agent.config import AgentConfig, ConfigError
from device_agent.store import AgentStore

V1 = Release("1.0.0", 1, tflite(b"v1"))
V2 = Release("2.0.0", 2, tflite(b"v2"))
YEAR = timedelta(days=365)


def _device(tmp_path: Path, **config: object) -> Device:
    device = Device(tmp_path / "agent", **config)
    device.tuf = FakeTuf([V1, V2])
    return device


def test_a_desired_state_from_a_year_ahead_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    device = _device(tmp_path)
    with file_server(Behaviour(data=V1.data)) as url:
        # when a correctly signed desired state issued a year ahead arrives
        device.runner().handle_desired(
            device.envelope(5, [V1.target(url)], issued_at=datetime.now(UTC) + YEAR)
        )
        # then it is refused with its code, and the device keeps its time and seq
        (event,) = device.publisher.events
        assert (event.phase, event.code, event.seq) == ("rejected", "issued_in_future", 5)
        assert not device.layout.store.exists()

        # and the next desired state of the director, at the right time, is installed
        device.runner().handle_desired(device.envelope(6, [V1.target(url)]))
    assert device.publisher.phases(6)[-1] == "committed", device.publisher.events
    store = AgentStore.load(device.layout.store)
    assert store.last_trusted_time is not None
    assert store.last_trusted_time < datetime.now(UTC) + timedelta(minutes=1)


def test_a_desired_state_within_the_allowed_skew_is_accepted(tmp_path: Path) -> None:
    device = _device(tmp_path, max_issued_ahead_s=600.0)
    with file_server(Behaviour(data=V1.data)) as url:
        ahead = datetime.now(UTC) + timedelta(seconds=500)
        device.runner().handle_desired(device.envelope(1, [V1.target(url)], issued_at=ahead))
    assert device.publisher.phases(1)[-1] == "committed", device.publisher.events


def test_a_refused_early_desired_state_is_judged_again_as_the_clock_moves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a device whose clock is an hour behind the director's (before NTP synced)
    monkeypatch.setattr(runner_module, "FUTURE_RETRY_S", 0.05)
    device = _device(tmp_path, max_issued_ahead_s=60.0)
    now = [datetime.now(UTC) - timedelta(hours=1)]
    runner = device.runner()
    runner.clock = lambda: now[0]
    worker = threading.Thread(target=runner.run)
    worker.start()
    try:
        with file_server(Behaviour(data=V1.data)) as url:
            runner.inbox.put(device.envelope(1, [V1.target(url)]))
            assert _wait(lambda: device.publisher.phases(1) == ["rejected"])
            # when its clock catches up
            now[0] = datetime.now(UTC)
            # then the same retained desired state is installed, refused only once
            assert _wait(lambda: "committed" in device.publisher.phases(1), 20)
    finally:
        runner.stop.set()
        worker.join(10)
    assert device.publisher.phases(1).count("rejected") >= 1


def test_without_a_trustworthy_clock_issued_at_is_not_bounded(tmp_path: Path) -> None:
    # The documented trade-off: such a device takes the director's issued_at as its
    # time; a desired state from a year ahead is accepted and later ones then expire.
    device = _device(tmp_path, max_issued_ahead_s=None)
    with file_server(Behaviour(data=V2.data)) as url:
        device.runner().handle_desired(
            device.envelope(
                1, [V2.target(url)], issued_at=datetime.now(UTC) + YEAR, expires_in=YEAR
            )
        )
        assert device.publisher.phases(1)[-1] == "committed", device.publisher.events
        device.runner().handle_desired(device.envelope(2, [V1.target(url)]))
    assert device.publisher.events[-1].code == "command_expired"


@pytest.mark.parametrize("value", [-1, "900", True, 10**9])
def test_a_bad_bound_is_refused_at_start(value: object) -> None:
    with pytest.raises(ConfigError, match="max_issued_ahead_s"):
        AgentConfig(
            device_id="d",
            hardware="h",
            server_url="http://x",
            tuf_url="http://x/",
            broker_url="mqtt://x",
            max_issued_ahead_s=value,  # type: ignore[arg-type]
        )


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = datetime.now(UTC) + timedelta(seconds=timeout)
    while datetime.now(UTC) < deadline:
        if predicate():
            return True
        threading.Event().wait(0.02)
    return bool(predicate())
