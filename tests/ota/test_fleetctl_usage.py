"""``fleetctl`` for a newcomer, without a server: every command and option explains itself,
every command takes ``--json``, and a server that cannot be reached says so with a code of
its own (not a device's ``download_failed``)."""

import argparse
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ota import cli


def _commands(
    parser: argparse.ArgumentParser, name: str = "fleetctl"
) -> Iterator[tuple[str, argparse.ArgumentParser, str | None]]:
    """(command path, its parser, its help in the parent's list) for every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for sub_name, sub in action.choices.items():
                path = f"{name} {sub_name}"
                yield path, sub, helps.get(sub_name)
                yield from _commands(sub, path)


COMMANDS = list(_commands(cli.build_parser()))
LEAVES = [
    (path, sub)
    for path, sub, _ in COMMANDS
    if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
]


def test_every_command_and_option_has_a_help_text() -> None:
    missing = [path for path, _, text in COMMANDS if not (text or "").strip()]
    for path, sub, _ in COMMANDS:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert len(COMMANDS) >= 12
    assert missing == []


@pytest.mark.parametrize(("path", "sub"), LEAVES, ids=[path for path, _ in LEAVES])
def test_every_command_takes_json(path: str, sub: argparse.ArgumentParser) -> None:
    assert "--json" in sub._option_string_actions, path


def test_publish_help_describes_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["publish", "--help"])
    out = capsys.readouterr().out
    for text in ("the model file to publish", "--json", "release counter", "(repeatable)"):
        assert text in out


@pytest.fixture
def release_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert cli.main(["keygen", "--out", str(tmp_path / "key")]) == 0
    capsys.readouterr()
    return tmp_path / "key" / "release.key"


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _publish(model: Path) -> list[str]:
    return ["publish", str(model), "--name", "kws", "--version", "1.0.0", "--hardware", "h1"] + [
        "--format",
        "onnx",
    ]


def test_publish_to_an_unreachable_server_says_so(
    tmp_path: Path,
    release_key_file: Path,
    refusing_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model")
    monkeypatch.setenv("FLEET_URL", f"http://127.0.0.1:{refusing_port}/")
    monkeypatch.setenv("FLEET_TOKEN", "t")
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(release_key_file))

    assert cli.main(_publish(model)) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        f"fleetctl: unreachable: cannot reach the server at http://127.0.0.1:{refusing_port} "
        "(Connection refused): check FLEET_URL"
    ), err
    assert "download_failed" not in err
    assert err.count("\n") == 1  # one line, no urllib3 object reprs
    assert "object at 0x" not in err


def test_a_rollout_command_to_an_unreachable_server_says_so(
    refusing_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLEET_URL", f"http://127.0.0.1:{refusing_port}")
    monkeypatch.setenv("FLEET_TOKEN", "t")
    assert cli.main(["rollout", "list", "--json"]) == 1
    assert capsys.readouterr().err.startswith("fleetctl: unreachable: ")


def test_a_server_that_drops_the_connection_is_not_called_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def drop() -> None:
            connection, _ = server.accept()
            connection.recv(65536)
            connection.close()

        thread = threading.Thread(target=drop, daemon=True)
        thread.start()
        monkeypatch.setenv("FLEET_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("FLEET_TOKEN", "t")
        assert cli.main(["rollout", "show", "r-1"]) == 1
        thread.join(10)
    err = capsys.readouterr().err
    assert err.startswith(
        f"fleetctl: connection_lost: the connection to the server at http://127.0.0.1:{port} broke"
    ), err


def test_a_server_that_does_not_answer_in_time_is_a_timeout() -> None:
    request = requests.Request("GET", "http://fleet.example:8000/api/v1/rollouts/").prepare()
    error = cli.transport_error(requests.ReadTimeout("read timed out", request=request))
    assert (error.code, error.detail) == (
        "timeout",
        "the server at http://fleet.example:8000 did not answer in time",
    )


@pytest.mark.parametrize("url", ["fleet.example.com", "ftp://fleet.example.com", "http://"])
def test_a_fleet_url_that_is_not_http_is_malformed(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLEET_URL", url)
    monkeypatch.setenv("FLEET_TOKEN", "t")
    assert cli.main(["rollout", "list"]) == 1
    assert capsys.readouterr().err.startswith(
        "fleetctl: malformed: FLEET_URL must be http(s)://HOST[:PORT]"
    )


def test_keygen_json_names_the_files_and_the_keyid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    assert cli.main(["keygen", "--out", str(tmp_path / "k"), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["private_key"] == str(tmp_path / "k" / "release.key")
    assert written["public_key"] == str(tmp_path / "k" / "release.pub")
    assert len(written["keyid"]) == 64
