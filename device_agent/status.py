"""`fleet-agent status`: the agent's identity, update, models and telemetry as JSON."""

import json

from device_agent import AGENT_VERSION
from device_agent.config import AgentConfig, Layout
from device_agent.journal import Journal
from device_agent.slots import ModelSlots


def agent_status(*, layout: Layout) -> str:
    """The state of the agent in `layout`, as indented JSON."""
    from device_agent.store import AgentStore

    config = AgentConfig.load(layout.root)
    store = AgentStore.load(layout.store)
    state = Journal(layout.journal).load()
    try:
        telemetry = json.loads(layout.metrics_stats.read_bytes())
    except (OSError, ValueError):
        telemetry = None
    models = {}
    for name, record in store.models.items():
        models[name] = {
            **record.to_dict(),
            "current": str(ModelSlots(layout.models, name).current() or ""),
        }
    return json.dumps(
        {
            "device_id": config.device_id,
            "hardware": config.hardware,
            "agent_version": AGENT_VERSION,
            "update": state.to_dict(),
            "last_seq": store.last_seq,
            "models": models,
            "telemetry": telemetry,
        },
        indent=2,
    )
