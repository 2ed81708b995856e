"""One module chooses between the databases for each kind of statement
(docs/architecture.md, "Bulk writes" and "Aggregate reads"): no other code outside
migrations looks at `connection.vendor`."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("device_agent", "fleet", "ota", "telemetry")
VENDOR = re.compile(r"\.vendor\b")

# Where the vendor choice lives. Shrink, never grow: a new entry needs a reason here.
OWNERS = frozenset(
    {
        "fleet/bulk.py",  # writes
        "fleet/aggregates.py",  # reads that compute over many rows
        "fleet/storage.py",  # table storage that migrations set
    }
)
# Still to move behind the owners (none left; a new entry needs a reason here).
NOT_YET: frozenset[str] = frozenset()


def _vendor_lines() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/migrations/" in relative:
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            hits = [n for n, line in enumerate(lines, 1) if VENDOR.search(line)]
            if hits:
                found[relative] = hits
    return found


def test_only_the_owning_modules_look_at_the_database_vendor() -> None:
    found = _vendor_lines()
    stray = {path: lines for path, lines in found.items() if path not in OWNERS | NOT_YET}
    assert not stray, f"move these behind fleet.bulk or fleet.aggregates: {stray}"


def test_every_listed_module_still_looks_at_the_vendor() -> None:
    # An entry whose module no longer chooses is taken off, so the lists only shrink.
    found = _vendor_lines()
    assert sorted((OWNERS | NOT_YET) - set(found)) == []


def test_the_check_finds_a_vendor_branch() -> None:
    assert VENDOR.search('    if connection.vendor == "postgresql":')
    assert VENDOR.search("schema_editor.connection.vendor")
    assert not VENDOR.search("vendors = 2")
