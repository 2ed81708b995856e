"""The shell commands in README.md and docs/ run as written: every ``fleetctl``,
``fleet-agent`` and ``manage.py`` command in a ``sh`` block parses with the real parser,
and ``manage.py`` is run by a Python (a bare ``manage.py`` is not on PATH, and
``./manage.py``'s shebang finds the system Python, without the project)."""

import re
import shlex
from argparse import ArgumentParser
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class

from device_agent import cli as agent_cli
from ota import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPERATORS = {"&&", "||", ";", "|", "&"}


def _commands(path: Path) -> Iterator[list[str]]:
    """Every simple command in the file's ``sh`` blocks, as argv (assignments dropped)."""
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            # a command substitution is a command of its own
            lines = [*re.findall(r"\$\(([^)]*)\)", line), re.sub(r"\$\([^)]*\)", "X", line)]
            for text in lines:
                lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                argv: list[str] = []
                for token in [*lexer, ";"]:
                    if token not in OPERATORS:
                        argv.append(token)
                        continue
                    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
                        argv.pop(0)
                    if argv and argv[0] != "export":
                        yield argv
                    argv = []


COMMANDS = [(path.name, argv) for path in DOCS for argv in _commands(path)]


def test_the_docs_have_commands_to_check() -> None:
    programs = {Path(argv[0]).name for _, argv in COMMANDS}
    assert {"fleetctl", "fleet-agent", "python"} <= programs


@pytest.mark.parametrize(
    ("doc", "argv"), COMMANDS, ids=[f"{doc}:{' '.join(argv)[:60]}" for doc, argv in COMMANDS]
)
def test_a_documented_command_runs_as_written(
    doc: str, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    program = Path(argv[0]).name
    assert program != "manage.py", f"{doc}: run manage.py with a Python: {' '.join(argv)}"
    if doc == "README.md" and program in ("fleetctl", "python"):
        # the README's readers run them from the quick start's checkout, venv not activated
        assert argv[0].startswith(".venv/bin/"), f"README: {' '.join(argv)}"
    if program == "fleetctl":
        # --policy @FILE reads the file while parsing; the docs' file is an example
        monkeypatch.setattr(cli, "parse_json_option", lambda text: {})
        _parse(cli.build_parser(), argv[1:])
    elif program == "fleet-agent":
        _parse(agent_cli.build_parser(), argv[1:])
    elif program.startswith("python") and argv[1:2] == ["manage.py"]:
        name, *args = argv[2:]
        assert name in get_commands(), f"{doc}: no such command: manage.py {name}"
        command = load_command_class(get_commands()[name], name)
        _parse(command.create_parser("manage.py", name), args)


def _parse(parser: ArgumentParser, args: list[str]) -> None:
    if "--help" in args:
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(args)
        assert exited.value.code == 0
    else:
        parser.parse_args(args)  # a usage error exits with status 2: the test fails
