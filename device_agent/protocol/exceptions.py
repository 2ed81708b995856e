"""The one exception the protocol package raises."""

from device_agent.protocol.errors import ErrorCode


class ProtocolError(Exception):
    """A message, topic, envelope or key was refused.

    `code` is the stable wire code (docs/protocol.md, Error codes) a caller puts in its event or API
    error; `detail` is for humans and logs, never parsed.
    """

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def brief(value: object) -> str:
    """repr() cut to 80 characters, for details that may echo untrusted input."""
    # Details end up in logs and events: never echo a 64 KiB attacker string whole.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
