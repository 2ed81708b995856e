"""Fixtures for the agent tests. Helpers live in agent_harness.py / agent_jobs.py (never
`import conftest`: several conftest modules exist)."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_harness import AgentProcess, Watcher, agent_cli
from mqtt_broker import MosquittoBroker
from pytest_django import Settings
from release_keys import ReleaseKeyFiles

from ota.models import Model


@dataclass
class Fleet:
    """A live control plane + broker, with an enrolled agent process."""

    server: str
    device_id: str
    agent_dir: Path
    agent: AgentProcess
    watcher: Watcher
    tmp_path: Path

    def wait_for(self, predicate: Any, what: str, timeout: float = 60) -> Any:
        return self.watcher.wait_for(predicate, timeout, what, self.agent.log)


@pytest.fixture
def fleet(
    live_server: Any,
    kws: Model,
    release_key: ReleaseKeyFiles,
    ci_token: str,
    mosquitto: MosquittoBroker,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Fleet]:
    """Publishing configured for fleetctl, a device enrolled through /api/v1/enroll,
    the agent running as a subprocess against the test's Mosquitto."""
    from fleet.enrollment import enrollment_token_create

    settings.FLEET_PUBLIC_URL = live_server.url
    settings.FLEET_MQTT_URL = f"mqtt://127.0.0.1:{mosquitto.port}"
    monkeypatch.setenv("FLEET_URL", live_server.url)
    monkeypatch.setenv("FLEET_TOKEN", ci_token)
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(release_key.private))
    _, token = enrollment_token_create(by=None)
    device_id = "dev-e2e"
    agent_dir = tmp_path / "agent"
    enrolled = agent_cli(
        "enroll",
        "--server",
        live_server.url,
        "--token",
        token,
        "--device-id",
        device_id,
        "--hardware",
        "linux-x86_64-fp32",
        "--dir",
        str(agent_dir),
    )
    assert enrolled.returncode == 0, enrolled.stderr
    watcher = Watcher(port=mosquitto.port, device_id=device_id)
    watcher.start()
    agent = AgentProcess(agent_dir)
    agent.start()
    fleet = Fleet(live_server.url, device_id, agent_dir, agent, watcher, tmp_path)
    fleet.wait_for(lambda: "online" in watcher.statuses, "the agent to come online", 30)
    try:
        yield fleet
    finally:
        agent.stop()
        watcher.stop()
