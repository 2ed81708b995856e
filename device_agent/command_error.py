"""The error a `fleet-agent` command refuses or fails with: a stable code and a detail."""


class CommandError(Exception):
    """`fleet-agent` prints `<code>: <detail>` and exits 1 (codes of docs/protocol.md)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
