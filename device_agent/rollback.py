"""`fleet-agent rollback`: an operator's offline return to a model's previous version."""

import hashlib

from device_agent.agent_lock import agent_lock
from device_agent.command_error import CommandError
from device_agent.config import AgentConfig, Layout
from device_agent.journal import Journal
from device_agent.protocol.messages import Phase
from device_agent.slots import ModelSlots
from device_agent.state import Status


def model_rollback(*, layout: Layout, model: str) -> str:
    """Swap `model` back to its previous slot, checked first; returns the line that says so."""
    from device_agent.store import AgentStore

    AgentConfig.load(layout.root)
    with agent_lock(layout):
        if Journal(layout.journal).load().status is not Status.IDLE:
            raise CommandError(
                "conflict", "an update is in progress; let the agent finish it first"
            )
        store = AgentStore.load(layout.store)
        record = store.models.get(model)
        if record is None or record.installed is None:
            raise CommandError("unknown_model", f"{model} is not installed")
        previous = record.previous
        if previous is None:
            raise CommandError("not_found", f"{model} has no previous version to go back to")
        if previous.release_counter < record.floor:
            raise CommandError(
                "downgrade_refused",
                f"{previous.version} (release {previous.release_counter}) is below the floor "
                f"{record.floor}",
            )
        slots = ModelSlots(layout.models, model)
        path = slots.file(previous.slot, previous.filename)
        digest = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while data := f.read(1024 * 1024):
                    digest.update(data)
        except FileNotFoundError:
            raise CommandError("not_found", f"{path} is missing") from None
        if digest.hexdigest() != previous.sha256:
            raise CommandError("hash_mismatch", f"{path} no longer has its recorded sha256")
        slots.swap(previous.slot)
        record.installed, record.previous = previous, record.installed
        record.status = Phase.ROLLED_BACK
        store.save()
    return f"{model}: now {previous.version} (slot {previous.slot})"
