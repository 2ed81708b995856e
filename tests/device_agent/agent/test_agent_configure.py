"""`fleet-agent configure`: an enrolled agent is pointed at other URLs, its identity and
other settings kept; nothing enrolled, a bad URL or a running agent is refused."""

import fcntl
import json
import os
from pathlib import Path

import pytest

from device_agent import cli
from device_agent.config import AgentConfig, Layout


def _enrolled(directory: Path) -> AgentConfig:
    config = AgentConfig(
        device_id="dev-1",
        hardware="linux-x86_64-fp32",
        server_url="http://old:8000",
        tuf_url="http://old:8000/tuf/",
        broker_url="mqtt://old:1883",
        trial_deadline_s=60,
    )
    directory.mkdir()
    config.save(directory)
    return config


def test_the_urls_change_and_the_rest_stays(tmp_path: Path) -> None:
    # given an enrolled agent
    directory = tmp_path / "agent"
    before = _enrolled(directory)

    # when it is pointed at another server and broker
    status = cli.main(
        ["configure", "--dir", str(directory), "--server", "http://new:8001/"]
        + ["--tuf-url", "http://new:8001/tuf/", "--broker-url", "mqtt://new:1884"]
    )

    # then those three change, and nothing else
    assert status == 0
    after = AgentConfig.load(directory)
    assert (after.server_url, after.tuf_url, after.broker_url) == (
        "http://new:8001",
        "http://new:8001/tuf/",
        "mqtt://new:1884",
    )
    assert (after.device_id, after.hardware, after.trial_deadline_s) == (
        before.device_id,
        before.hardware,
        before.trial_deadline_s,
    )


def test_nothing_to_change_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "agent"
    _enrolled(directory)
    path = directory / "config.json"
    os.utime(path, ns=(0, 0))

    status = cli.main(["configure", "--dir", str(directory), "--broker-url", "mqtt://old:1883"])

    assert status == 0
    assert path.stat().st_mtime_ns == 0


def test_an_agent_not_enrolled_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(["configure", "--dir", str(tmp_path), "--broker-url", "mqtt://x:1"])

    assert status == 1
    assert "run `fleet-agent enroll` first" in capsys.readouterr().err
    assert not (tmp_path / "config.json").exists()


def test_a_bad_url_is_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "agent"
    _enrolled(directory)
    before = (directory / "config.json").read_bytes()

    status = cli.main(["configure", "--dir", str(directory), "--broker-url", "http://x:1"])

    assert status == 1
    assert "malformed" in capsys.readouterr().err
    assert (directory / "config.json").read_bytes() == before


def test_a_running_agent_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # given an agent holding its directory's lock, as `fleet-agent run` does
    directory = tmp_path / "agent"
    _enrolled(directory)
    before = json.loads((directory / "config.json").read_bytes())
    fd = os.open(Layout(directory).lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

        status = cli.main(["configure", "--dir", str(directory), "--broker-url", "mqtt://x:1"])
    finally:
        os.close(fd)

    assert status == 1
    assert "another fleet-agent" in capsys.readouterr().err
    assert json.loads((directory / "config.json").read_bytes()) == before
