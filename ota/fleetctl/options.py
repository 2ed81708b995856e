"""What every fleetctl command shares: --json and the printing it chooses, and
identifier arguments checked by the server's rules."""

import argparse
import json
from collections.abc import Callable
from typing import Any

from device_agent.protocol.identifiers import IdentifierKind


def output_options() -> argparse.ArgumentParser:
    """The option every command takes."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--json", action="store_true", help="print JSON (the API's answer) instead of text"
    )
    return output


def print_result(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def identifier(kind: IdentifierKind) -> Callable[[str], str]:
    """An argparse type: the server's rule for ``kind`` (exit status 2 before any request)."""
    return kind.argument()
