"""Identifier alphabets: one full-match rule per kind (docs/api.md, "Identifiers").

The API (serializers, URL converters, query filters), the admin (model validators),
`fleetctl`, the director and the agent all check identifiers with these rules and
nothing else, so an id that one of them accepts can be addressed by all the others: it
is a URL segment, a TUF target path segment and a directory name on the device.

Every pattern is ASCII-only and used with `fullmatch` (a `$` anchor would let a
trailing newline through; `\\d` and `str.isdigit()` accept non-ASCII digits).
"""

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass

from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError, brief

# semver.org 2.0.0 with ASCII classes.
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER_PATTERN = (
    rf"{_NUM}\.{_NUM}\.{_NUM}(?:-{_PRE}(?:\.{_PRE})*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
# TUF's top-level role names: a model's delegated role is named after the model.
TUF_ROLE_NAMES = frozenset({"root", "targets", "snapshot", "timestamp"})


@dataclass(frozen=True, slots=True)
class IdentifierKind:
    """One kind of identifier: its alphabet (a full-match pattern) and length limit."""

    name: str
    regex: re.Pattern[str]
    max_length: int
    example: str
    code: ErrorCode = ErrorCode.INVALID_IDENTIFIER
    reserved: frozenset[str] = frozenset()

    @property
    def pattern(self) -> str:
        return self.regex.pattern

    def is_valid(self, value: object) -> bool:
        return (
            isinstance(value, str)
            and len(value) <= self.max_length
            and self.regex.fullmatch(value) is not None
            and value not in self.reserved
        )

    def rule(self) -> str:
        """The rule in words, for error details and help texts."""
        text = f"{self.pattern}, at most {self.max_length} characters"
        if self.reserved:
            text += f", not {'/'.join(sorted(self.reserved))}"
        return f"{text}, e.g. {self.example}"

    def check(self, value: object, *, field: str) -> str:
        """`value` if it is a valid identifier of this kind, else InvalidIdentifier."""
        if not self.is_valid(value):
            raise InvalidIdentifier(self, field, value)
        return value  # type: ignore[return-value]  # is_valid: a str

    def argument(self) -> Callable[[str], str]:
        """An argparse ``type=``: a bad value is a usage error (exit status 2)."""

        def parse(text: str) -> str:
            if not self.is_valid(text):
                raise argparse.ArgumentTypeError(
                    f"{text!r} is not a valid {self.name}: {self.rule()}"
                )
            return text

        parse.__name__ = self.name
        return parse


class InvalidIdentifier(ProtocolError):
    """`field` holds something outside its kind's alphabet; `code` is the kind's code."""

    def __init__(self, kind: IdentifierKind, field: str, value: object) -> None:
        super().__init__(
            kind.code, f"{field}: {brief(value)} is not a valid {kind.name} ({kind.rule()})"
        )
        self.kind = kind
        self.field = field


def _kind(
    name: str,
    pattern: str,
    max_length: int,
    example: str,
    *,
    code: ErrorCode = ErrorCode.INVALID_IDENTIFIER,
    reserved: frozenset[str] = frozenset(),
) -> IdentifierKind:
    return IdentifierKind(name, re.compile(pattern), max_length, example, code, reserved)


# Lower case only: model names and hardware are directory names on the device and on
# S3, and file systems that fold case would merge two of them.
MODEL_NAME = _kind("model name", r"[a-z0-9][a-z0-9_-]{0,63}", 64, "kws", reserved=TUF_ROLE_NAMES)
HARDWARE = _kind("hardware target", r"[a-z0-9][a-z0-9_-]{0,63}", 64, "esp32s3-int8")
# An existing code: publishing answered invalid_version before this module existed.
VERSION = _kind("semver version", SEMVER_PATTERN, 64, "1.4.0", code=ErrorCode.INVALID_VERSION)
# The device id is the MQTT topic level and the certificate's CN (docs/protocol.md, MQTT topics).
DEVICE_ID = _kind("device id", r"[A-Za-z0-9_-]{1,64}", 64, "dev-0042")
GROUP_NAME = _kind("group name", r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", 64, "canary")
TAG_NAME = _kind("tag name", r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", 64, "site:berlin")
# The API's rollout id `r-<n>`; URLs also take the bare number.
ROLLOUT_ID = _kind("rollout id", r"(?:r-)?[1-9][0-9]{0,17}", 20, "r-42")
# The rollout id a device echoes on the wire: ours are r-<n>, other systems' are tokens.
REPORTED_ROLLOUT_ID = _kind("reported rollout id", r"[A-Za-z0-9_-]{1,64}", 64, "r-42")
ARM_NAME = _kind("arm name", r"[A-Za-z0-9_-]{1,64}", 64, "B")
ARTIFACT_FORMAT = _kind("artifact format", r"[a-z0-9][a-z0-9_-]{0,31}", 32, "tflite")
# The last segment of a target path: a file name on the device, never hidden or `..`.
FILENAME = _kind("artifact file name", r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", 128, "kws.tflite")
RELEASE_KEY_ID = _kind(
    "release key id",
    r"[0-9a-f]{64}",
    64,
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
)

KINDS: tuple[IdentifierKind, ...] = (
    MODEL_NAME,
    VERSION,
    HARDWARE,
    DEVICE_ID,
    GROUP_NAME,
    TAG_NAME,
    ROLLOUT_ID,
    REPORTED_ROLLOUT_ID,
    ARM_NAME,
    ARTIFACT_FORMAT,
    FILENAME,
    RELEASE_KEY_ID,
)


def rollout_number(value: object) -> int | None:
    """The number in a rollout id `r-<n>` or `<n>`, or None when it is not one."""
    if not ROLLOUT_ID.is_valid(value):
        return None
    return int(str(value).removeprefix("r-"))
