"""The project cites its own docs, never a file outside the repository.

The contract is docs/protocol.md (the wire) and docs/architecture.md (the parts); a
comment or a doc pointing at a design or style file beside the checkout points at
nothing for whoever gets the repository alone.
"""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {
    ".git",
    ".venv",
    "var",
    "build",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "fleet_ota.egg-info",
}
# Built from parts so this file does not match itself.
OUTSIDE = re.compile("|".join([re.escape("../" + "shared"), r"\b(?:DESIGN|STYLE)\.md\b"]))


def _text_files() -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS]
        files += [Path(directory, n) for n in names if not Path(directory, n).is_symlink()]
    return files


def test_the_scan_reads_the_code_and_the_docs() -> None:
    names = {str(p.relative_to(ROOT)) for p in _text_files()}
    assert {"README.md", "docs/protocol.md", "fleet/director.py", "deploy/mosquitto/acl"} <= names


def test_no_file_cites_a_file_outside_the_repository() -> None:
    found = []
    for path in _text_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "cite docs/protocol.md or docs/architecture.md instead:\n" + "\n".join(found)
