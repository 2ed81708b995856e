"""The local metrics API: the agent's Unix datagram socket (and optional loopback UDP port),
the applications' report() function and `fleet-agent report`."""

import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest
from agent_telemetry import ListOut, metrics_service, wait_until

from device_agent import cli
from device_agent.metrics_client import report
from device_agent.telemetry import Refusal


def test_report_reaches_the_socket_which_is_group_writable_and_removed_on_stop(
    tmp_path: Path,
) -> None:
    out = ListOut()
    with metrics_service(tmp_path / "agent", out=out, telemetry_batch_seconds=0.05) as service:
        path = service.socket_path
        assert path == tmp_path / "agent" / "metrics.sock"
        mode = os.lstat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660

        assert report("kws", latency_ms=12.5, confidence=0.93, socket_path=path)
        assert report("kws", {"latency_ms": 7, "top1": 3}, socket_path=path)
        wait_until(lambda: len(out.samples()) == 2, "both samples published")
    assert [s.metrics for s in out.samples()] == [
        {"latency_ms": 12.5, "confidence": 0.93},
        {"latency_ms": 7.0, "top1": 3.0},
    ]
    assert not path.exists()


def test_report_never_raises_and_says_false_when_it_could_not_hand_over(tmp_path: Path) -> None:
    missing = tmp_path / "no-agent.sock"
    assert report("kws", latency_ms=1.0, socket_path=missing) is False
    assert report("kws", latency_ms=float("nan"), socket_path=missing) is False
    assert report("kws", {"latency_ms": "fast"}, socket_path=missing) is False  # type: ignore[dict-item]
    assert report("kws", latency_ms=1.0, udp_port=9) in (True, False)  # UDP cannot tell

    # an agent that does not read (hung, or busy) fills its queue: report() does not wait
    path = tmp_path / "stuck.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stuck:
        stuck.bind(str(path))
        started = time.monotonic()
        results = [report("kws", latency_ms=float(i), socket_path=path) for i in range(2000)]
        elapsed = time.monotonic() - started
    assert results[0] is True
    assert results[-1] is False
    assert elapsed < 5


def test_a_socket_path_longer_than_sun_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    out = ListOut()
    with metrics_service(deep, out=out, telemetry_batch_seconds=0.05) as service:
        assert service.socket_path is not None
        assert len(str(service.socket_path)) > 108
        assert report("kws", latency_ms=3.0, socket_path=service.socket_path)
        wait_until(lambda: out.payloads, "the sample published")


def test_a_stale_socket_is_replaced_but_another_file_is_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "agent"
    directory.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(directory / "metrics.sock"))
    stale.close()  # what a killed agent leaves behind
    with metrics_service(directory) as service:
        assert service.socket_path is not None
        assert report("kws", latency_ms=1.0, socket_path=service.socket_path)
        wait_until(lambda: service.counters.accepted == 1, "the sample read")

    precious = tmp_path / "precious"
    precious.write_text("keep me")
    with metrics_service(directory, metrics_socket=str(precious)) as service:
        # the endpoint is not available, the agent goes on without it
        assert report("kws", latency_ms=1.0, socket_path=precious) is False
        assert service.counters.received == 0
    assert precious.read_text() == "keep me"


def test_the_udp_endpoint_listens_on_loopback_only(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = ListOut()
    with metrics_service(
        tmp_path / "agent",
        out=out,
        metrics_socket="",
        metrics_udp_port=port,
        telemetry_batch_seconds=0.05,
    ) as service:
        assert service.socket_path is None
        assert not (tmp_path / "agent" / "metrics.sock").exists()
        bound = service._sockets[0].getsockname()
        assert bound == ("127.0.0.1", port)
        assert report("kws", latency_ms=4.5, udp_port=port)
        wait_until(lambda: out.payloads, "the UDP sample published")
    assert out.samples()[0].metrics == {"latency_ms": 4.5}


def test_fleet_agent_report_sends_one_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ListOut()
    directory = tmp_path / "agent"
    with metrics_service(directory, out=out, telemetry_batch_seconds=0.05):
        # given no config.json: the socket in --dir is used
        code = cli.main(["report", "--dir", str(directory), "kws", "latency_ms=12.5", "conf=0.9"])
        assert code == 0, capsys.readouterr().err
        wait_until(lambda: out.payloads, "the sample published")
    assert out.samples()[0].metrics == {"latency_ms": 12.5, "conf": 0.9}

    # no agent: exit 1 with a message that says so
    assert cli.main(["report", "--dir", str(directory), "kws", "latency_ms=1"]) == 1
    assert "unavailable" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["report", "--dir", str(directory), "kws", "latency_ms"])


def test_stats_are_written_for_fleet_agent_status(tmp_path: Path) -> None:
    directory = tmp_path / "agent"
    with metrics_service(directory, telemetry_batch_seconds=0.05) as service:
        assert service.socket_path is not None
        report("kws", latency_ms=1.0, socket_path=service.socket_path)
        report("vad", latency_ms=1.0, socket_path=service.socket_path)
        wait_until(lambda: service.counters.received == 2, "both read")
    stats = json.loads((directory / "metrics-stats.json").read_text())
    assert stats["received"] == 2
    assert stats["accepted"] == 1
    assert stats["refused"][Refusal.UNKNOWN_MODEL] == 1
    assert stats["sent_samples"] == 1
