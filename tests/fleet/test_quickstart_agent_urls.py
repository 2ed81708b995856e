"""The quick start run again on other ports points its enrolled simulated agents at them,
through the agent's own CLI (the server does not import the agent's modules)."""

from pathlib import Path

from device_agent.config import AgentConfig
from fleet.management.commands.fleet_up import SIM_HARDWARE, _simulated_device


def test_a_restart_on_other_ports_rewrites_the_agents_urls(tmp_path: Path) -> None:
    # given a simulated agent enrolled by an earlier run on ports 8000 and 1883
    directory = tmp_path / "devices" / "sim-000"
    directory.mkdir(parents=True)
    AgentConfig(
        device_id="sim-000",
        hardware=SIM_HARDWARE,
        server_url="http://127.0.0.1:8000",
        tuf_url="http://127.0.0.1:8000/tuf/",
        broker_url="mqtt://127.0.0.1:1883",
    ).save(directory)

    # when the quick start prepares it for a run on ports 8001 and 1884
    assert _simulated_device(tmp_path, 0, "http://127.0.0.1:8001", 1884) == directory

    # then the agent's settings name the new ports, and its identity is the same
    config = AgentConfig.load(directory)
    assert (config.server_url, config.tuf_url, config.broker_url) == (
        "http://127.0.0.1:8001",
        "http://127.0.0.1:8001/tuf/",
        "mqtt://127.0.0.1:1884",
    )
    assert (config.device_id, config.hardware) == ("sim-000", SIM_HARDWARE)
