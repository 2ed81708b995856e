"""sd_notify: READY and watchdog pings reach a real datagram socket, as systemd reads them."""

import socket

from device_agent.systemd import Notifier


def test_ready_and_watchdog_reach_the_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        assert notifier.ready("connected")
        assert server.recv(100) == b"READY=1\nSTATUS=connected"
        assert notifier.watchdog()
        assert server.recv(100) == b"WATCHDOG=1"
        # at most once per half interval (1 s here)
        assert not notifier.watchdog()


def test_outside_systemd_everything_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_the_unit_restarts_and_watches_the_agent():
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[3] / "deploy/systemd/fleet-agent.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "fleet-agent run"):
        assert line in unit
