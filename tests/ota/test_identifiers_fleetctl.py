"""Every identifier argument of fleetctl: a value outside the alphabet is a usage error
(exit status 2, the rule in the message) before any request; a valid one gets past the
parser (and then fails to reach the unreachable server: exit status 1)."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identifier_strategies import invalid, valid

from device_agent.protocol import identifiers as ids
from device_agent.protocol.identifiers import IdentifierKind
from ota import cli

PROPERTY = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
PUBLISH = ["publish", "FILE", "--name", "kws", "--version", "1.4.0", "--hardware", "hw"]
PUBLISH += ["--format", "onnx"]
CREATE = ["rollout", "create", "--model", "kws", "--version", "1.4.0", "--all"]
AB = ["rollout", "create", "--model", "kws", "--all", "--baseline", "A", "--arm", "B=1.4.0"]

# (id, kind, argv with "{}" where the identifier goes)
ARGUMENTS: list[tuple[str, IdentifierKind, list[str]]] = [
    ("publish --name", ids.MODEL_NAME, [*PUBLISH, "--name={}"]),
    ("publish --version", ids.VERSION, [*PUBLISH, "--version={}"]),
    ("publish --hardware", ids.HARDWARE, [*PUBLISH, "--hardware={}"]),
    ("publish --format", ids.ARTIFACT_FORMAT, [*PUBLISH, "--format={}"]),
    ("resign --name", ids.MODEL_NAME, ["resign", "--name={}"]),
    ("create --model", ids.MODEL_NAME, [*CREATE, "--model={}"]),
    ("create --version", ids.VERSION, [*CREATE, "--version={}"]),
    ("create --group", ids.GROUP_NAME, [*CREATE, "--group={}"]),
    ("create --dynamic-group", ids.GROUP_NAME, [*CREATE, "--dynamic-group={}"]),
    ("create --device", ids.DEVICE_ID, [*CREATE, "--device={}"]),
    ("create --tag", ids.TAG_NAME, [*CREATE, "--tag={}"]),
    ("create --hardware", ids.HARDWARE, [*CREATE, "--hardware={}"]),
    ("create --baseline", ids.ARM_NAME, [*AB, "--arm={}=1.3.0", "--baseline={}"]),
    ("create --arm name", ids.ARM_NAME, [*AB, "--baseline=B", "--arm={}=1.3.0"]),
    ("create --arm version", ids.VERSION, [*AB, "--arm=A={}"]),
    ("list --model", ids.MODEL_NAME, ["rollout", "list", "--model={}"]),
    ("show ID", ids.ROLLOUT_ID, ["rollout", "show", "--", "{}"]),
    *[
        (f"{action} ID", ids.ROLLOUT_ID, ["rollout", action, "--reason=r", "--", "{}"])
        for action in ("start", "pause", "resume", "abort", "schedule", "unschedule")
    ],
    ("promote ID", ids.ROLLOUT_ID, ["rollout", "promote", "--arm=B", "--", "{}"]),
    ("promote --arm", ids.ARM_NAME, ["rollout", "promote", "r-1", "--arm={}"]),
]


@pytest.fixture
def environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEET_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("FLEET_TOKEN", "t")
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(tmp_path / "missing.key"))
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"bytes")
    return artifact


def _argv(template: list[str], value: str, artifact: Path) -> list[str]:
    return [str(artifact) if part == "FILE" else part.replace("{}", value) for part in template]


def _exit_status(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exited:
        return int(exited.code or 0)


@pytest.mark.parametrize(
    ("kind", "template"), [pytest.param(*case[1:], id=case[0]) for case in ARGUMENTS]
)
@PROPERTY
@given(data=st.data())
def test_bad_identifier_arguments_are_usage_errors(environment, capsys, kind, template, data):
    value = data.draw(invalid(kind).filter(lambda v: "\x00" not in v and "=" not in v))
    assert _exit_status(_argv(template, value, environment)) == 2
    err = capsys.readouterr().err
    # an empty arm name or version: the NAME=VERSION form is what is wrong
    assert f"is not a valid {kind.name}" in err or (value == "" and "NAME=VERSION" in err)


@pytest.mark.parametrize(
    ("kind", "template"), [pytest.param(*case[1:], id=case[0]) for case in ARGUMENTS]
)
@settings(PROPERTY, max_examples=5)
@given(data=st.data())
def test_valid_identifier_arguments_pass_the_parser(environment, capsys, kind, template, data):
    value = data.draw(valid(kind))
    assert _exit_status(_argv(template, value, environment)) == 1, capsys.readouterr().err


@PROPERTY
@given(
    name=invalid(ids.FILENAME).filter(
        lambda v: v not in ("", ".") and "/" not in v and "\x00" not in v
    )
)
def test_an_artifact_file_name_outside_the_alphabet_is_a_usage_error(environment, capsys, name):
    artifact = environment.parent / "odd" / name
    argv = _argv(PUBLISH, "", environment)
    argv[1] = str(artifact)
    assert _exit_status(argv) == 2
    assert "is not a valid artifact file name" in capsys.readouterr().err
