"""What the runner tags applications' samples with: the committed version, and the rollout
and arm the last accepted desired entry gave for the bytes installed, also when that
entry needed no install (the A/B arm that keeps the baseline) and across restarts; an
update that is pending or failed does not move the tags to the version it wanted."""

from pathlib import Path

import pytest
from agent_device import Device, FakeTuf, Release, tflite
from agent_http import Behaviour, file_server

from device_agent.telemetry import ModelTags

V1 = Release("1.0.0", 1, tflite(b"v1"))
V2 = Release("2.0.0", 2, tflite(b"v2"))


@pytest.fixture
def device(tmp_path: Path) -> Device:
    device = Device(tmp_path / "agent")
    device.tuf = FakeTuf([V1, V2])
    return device


def test_tags_follow_the_installed_bytes_and_their_last_rollout(device: Device) -> None:
    runner = device.runner()
    assert runner.telemetry_tags == {}

    # given v1 installed for rollout r-1 (no arm)
    with file_server(Behaviour(data=V1.data)) as url:
        runner.handle_desired(device.envelope(1, [V1.target(url, rollout_id="r-1")]))
        assert runner.telemetry_tags == {
            "kws": ModelTags(version="1.0.0", rollout_id="r-1", arm=None)
        }

        # when an A/B rollout puts this device in the arm that keeps v1
        runner.handle_desired(device.envelope(2, [V1.target(url, rollout_id="r-7", arm="A")]))

    # then nothing is installed, but its samples now count for r-7 arm A
    assert device.publisher.phases(2) == []
    assert runner.telemetry_tags["kws"] == ModelTags(version="1.0.0", rollout_id="r-7", arm="A")
    # and a restarted agent knows it too
    assert device.runner().telemetry_tags == runner.telemetry_tags

    # when the device is moved to arm B (v2) but v2 cannot be downloaded
    with file_server(Behaviour(status=404)) as url:
        runner.handle_desired(device.envelope(3, [V2.target(url, rollout_id="r-7", arm="B")]))
    assert device.publisher.phases(3)[-1] == "failed"

    # then v1 keeps reporting as what it is
    assert runner.telemetry_tags["kws"] == ModelTags(version="1.0.0", rollout_id="r-7", arm="A")

    # when v2 arrives
    with file_server(Behaviour(data=V2.data)) as url:
        runner.handle_desired(device.envelope(4, [V2.target(url, rollout_id="r-7", arm="B")]))
    assert device.publisher.phases(4)[-1] == "committed"
    assert runner.telemetry_tags["kws"] == ModelTags(version="2.0.0", rollout_id="r-7", arm="B")

    # when the rollout ends and the director names v2 without a rollout
    with file_server(Behaviour(data=V2.data)) as url:
        runner.handle_desired(device.envelope(5, [V2.target(url, rollout_id=None, arm=None)]))
    assert runner.telemetry_tags["kws"] == ModelTags(version="2.0.0", rollout_id=None, arm=None)
