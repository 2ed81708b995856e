"""Which part of the code may import which (docs/architecture.md, "Parts and layers").

Every import between parts (module level or inside a function; not the ones under
`if TYPE_CHECKING:`) must follow RULES. An import that had to break them would be listed
in KNOWN (none does today): a new one fails the test, and so does an entry that no longer
occurs, so the list only shrinks.
"""

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("device_agent", "fleet", "ota", "telemetry")

# Longest prefix first wins. A module is in the first part whose prefix it starts with.
PARTS: tuple[tuple[str, str], ...] = (
    ("device_agent.protocol", "protocol"),
    ("device_agent", "agent"),
    ("fleet.bridge", "bridge"),
    # The composition root: settings, URL and Celery wiring, entry points and the
    # development tools that put every part together.
    ("fleet.settings", "project"),
    ("fleet.urls", "project"),
    ("fleet.api_urls", "project"),
    ("fleet.celery", "project"),
    ("fleet.wsgi", "project"),
    ("fleet.asgi", "project"),
    ("fleet.management", "project"),
    ("fleet.devserver", "project"),
    ("fleet.sample", "project"),
    ("fleet.identifier_report", "project"),
    # Each app's AppConfig.ready registers its handlers with the parts below it.
    ("fleet.apps", "project"),
    ("ota.apps", "project"),
    ("telemetry.apps", "project"),
    ("fleet.bulk", "database"),
    ("fleet.aggregates", "database"),
    ("fleet.storage", "database"),
    ("telemetry.metrics", "metrics"),
    ("telemetry.batch_histogram", "metrics"),
    ("fleet", "registry"),
    ("ota", "ota"),
    ("telemetry", "telemetry"),
)

# What each part may import, as it should be.
RULES: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "agent": frozenset({"protocol"}),
    "database": frozenset(),
    "registry": frozenset({"protocol", "metrics", "database"}),
    "ota": frozenset({"registry", "protocol", "metrics", "database"}),
    "telemetry": frozenset({"registry", "protocol", "metrics", "database"}),
    "metrics": frozenset({"protocol"}),
    "bridge": frozenset({"protocol", "metrics", "database"}),
    "project": frozenset(
        {"registry", "ota", "telemetry", "metrics", "bridge", "protocol", "database"}
    ),
}

# (importing module, imported module): violations still to be paid back (none).
KNOWN: frozenset[tuple[str, str]] = frozenset()


# The `fleet` package itself is the Django project (its __init__ starts Celery).
EXACT = {"fleet": "project"}


def part_of(module: str) -> str | None:
    if module in EXACT:
        return EXACT[module]
    for prefix, part in PARTS:
        if module == prefix or module.startswith(prefix + "."):
            return part
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for child in node.body:
                skipped |= {id(n) for n in ast.walk(child)}
    return skipped


def imports() -> Iterator[tuple[str, str]]:
    """(importing module, imported module) for every import of the project's packages."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            module = _module_name(path)
            tree = ast.parse(path.read_text(), str(path))
            skipped = _type_checking_only(tree)
            for node in ast.walk(tree):
                if id(node) in skipped:
                    continue
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield module, alias.name
                elif isinstance(node, ast.ImportFrom) and node.module:
                    if node.level:
                        base = module.split(".")
                        if path.name != "__init__.py":
                            base = base[:-1]
                        base = base[: len(base) - (node.level - 1)]
                        name = ".".join([*base, node.module])
                    else:
                        name = node.module
                    for alias in node.names:
                        sub = f"{name}.{alias.name}"
                        yield module, sub if _is_module(sub) else name


def violations(pairs: Iterable[tuple[str, str]] | None = None) -> set[tuple[str, str]]:
    found = set()
    for importer, imported in imports() if pairs is None else pairs:
        source, target = part_of(importer), part_of(imported)
        if source is None or target is None or source == target:
            continue
        if target not in RULES[source]:
            found.add((importer, imported))
    return found


def test_the_rules_have_no_cycle() -> None:
    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
            for nxt in RULES[start]
        )

    assert not [part for part in RULES if reaches(part, part)]


def test_every_module_belongs_to_a_part() -> None:
    modules = {importer for importer, _ in imports()}
    assert modules
    assert not {m for m in modules if part_of(m) is None}


def test_imports_follow_the_layers() -> None:
    new = violations() - KNOWN
    assert not new, (
        "imports against docs/architecture.md's layers (move the code to its layer, or "
        f"register a handler instead of importing upwards): {sorted(new)}"
    )


def test_the_list_of_known_violations_only_shrinks() -> None:
    gone = KNOWN - violations()
    assert not gone, f"no longer violated, remove from KNOWN: {sorted(gone)}"


def test_the_protocol_imports_nothing_of_the_project_but_itself() -> None:
    outside = {
        (importer, imported)
        for importer, imported in imports()
        if part_of(importer) == "protocol"
        and imported.split(".")[0] in PACKAGES
        and part_of(imported) != "protocol"
    }
    assert not outside


def test_the_checker_sees_a_violation() -> None:
    # the checker itself: an upward import is reported, a downward one is not
    assert part_of("device_agent.protocol.envelope") == "protocol"
    assert part_of("fleet.bridge.worker") == "bridge"
    assert part_of("fleet.models") == "registry"
    assert "ota" not in RULES["registry"]
    upward, downward = ("fleet.director", "ota.models"), ("ota.rollouts", "fleet.models")
    assert violations([upward, downward]) == {upward}
    assert part_of("fleet.bulk") == "database"
    assert part_of("fleet.aggregates") == "database"
    assert part_of("ota.apps") == "project"


def test_no_cycle_between_the_parts_but_the_known_one() -> None:
    # Imports between parts as the code has them (known violations included): no part
    # reaches itself through others.
    edges: dict[str, set[str]] = {}
    for importer, imported in imports():
        source, target = part_of(importer), part_of(imported)
        if source and target and source not in {target, "project"}:
            edges.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    assert not [part for part in edges if reaches(part, part)]


def test_no_module_import_cycle_in_ota() -> None:
    # engine -> rollouts -> tasks -> engine was a cycle broken by an import inside a
    # function; rollouts now has the evaluation queue registered (ota/apps.py).
    graph: dict[str, set[str]] = {}
    for importer, imported in imports():
        if importer.startswith("ota.") and imported.startswith("ota."):
            graph.setdefault(importer, set()).add(imported)

    def cycle_from(start: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt == start:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    assert not sorted(m for m in graph if cycle_from(m))
