"""The protocol package imports only the standard library and cryptography, so the
agent, the control plane and any tool can share it (never Django, never paho)."""

import ast
import sys
from pathlib import Path

import device_agent.protocol

PACKAGE = Path(device_agent.protocol.__file__).parent
ALLOWED = set(sys.stdlib_module_names) | {"cryptography", "device_agent"}


def test_only_stdlib_and_cryptography_are_imported() -> None:
    imported: set[str] = set()
    for source in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])

    assert imported, "no imports found: wrong directory?"
    assert imported <= ALLOWED, imported - ALLOWED
