"""The update in progress (`journal.json`), written before each action is applied.

The file holds one AgentState. It is replaced atomically (temp + fsync + os.replace +
fsync dir), so after a crash or power loss it holds either the state before a
transition or the one after it, never a mix; see device_agent/state.py for what
recovery does in each state. Idle is the absence of the file.
"""

import json
from pathlib import Path

from device_agent.protocol.fsutil import remove_durably, write_json_atomic
from device_agent.state import IDLE, AgentState, Status

JOURNAL_VERSION = 1


class JournalError(Exception):
    """The journal exists but cannot be read back (corrupt or from a newer agent)."""


class Journal:
    """Load and persist the AgentState of the update in progress."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        """The journaled state, IDLE when there is none."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return IDLE
        try:
            data = json.loads(raw)
            if data.get("v") != JOURNAL_VERSION:
                raise JournalError(f"journal version {data.get('v')!r} is not {JOURNAL_VERSION}")
            return AgentState.from_dict(data["state"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JournalError(f"unreadable journal {self.path}: {exc}") from exc

    def save(self, state: AgentState) -> None:
        """Persist `state` durably; IDLE removes the file."""
        if state.status is Status.IDLE and not state.pending:
            remove_durably(self.path)
            return
        write_json_atomic(self.path, {"v": JOURNAL_VERSION, "state": state.to_dict()})
