"""The cases issue 15 found, each end to end: an identifier that a `$` anchor, `\\d` or
`isdigit()` let through is now refused with a stable code, and nothing is written."""

from pathlib import Path
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.test import Client
from publishing_helpers import current_metadata, error_code, post_publish, signed_metadata

from device_agent import cli as agent_cli
from device_agent.config import AgentConfig, ConfigError
from fleet.models import Group
from ota import cli
from ota.models import Artifact, TufMetadata

DATA = b"model bytes " * 10
HW = "linux-x86_64-fp32"


def _stored(repo: Path) -> tuple[int, int, list[Path]]:
    blobs = sorted(p for p in (repo / "artifacts").rglob("*") if p.is_file())
    return Artifact.objects.count(), TufMetadata.objects.count(), blobs


@pytest.fixture
def staff(db):
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw-long-123456"))
    return client


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"version": "1.3.0\n"}, "invalid_version"),
        ({"version": "1.1\u0663.0"}, "invalid_version"),  # an Arabic-Indic digit
        ({"hardware": "esp32\n"}, "invalid_identifier"),
        ({"fmt": "onnx\n"}, "invalid_identifier"),
        ({"filename": "model.onnx\n"}, "invalid_target_path"),
        ({"filename": "-model.onnx"}, "invalid_target_path"),  # the agent refuses it
    ],
    ids=["version-newline", "version-unicode-digit", "hardware", "format", "file", "file-dash"],
)
def test_publish_refuses_what_a_dollar_anchor_let_through(
    kws, release_key, ci_token, repo, tmp_path, fields, code
):
    client = Client()
    values = {"version": "1.3.0", "hardware": HW, "fmt": "onnx", "filename": "model.onnx"}
    values.update(fields)
    md = signed_metadata(
        current_metadata(client, ci_token),
        release_key.signer,
        DATA,
        version=values["version"],
        hardware=values["hardware"],
        fmt=values["fmt"],
        path=f"models/kws/{values['version']}/{values['hardware']}/{values['filename']}",
    )
    before = _stored(repo)
    response = post_publish(client, ci_token, md, DATA, tmp_path)
    assert response.status_code == 400, response.content
    assert error_code(response) == code
    assert _stored(repo) == before


@pytest.mark.parametrize("rollout_id", ["²", "r-²", "1²", "٤٢"])
def test_a_unicode_digit_rollout_id_is_a_400_not_a_500(staff, rollout_id):
    encoded = quote(rollout_id)
    for path in (f"/api/v1/rollouts/{encoded}/", f"/api/v1/rollouts/{encoded}/audit"):
        response = staff.get(path)
        assert response.status_code == 400, response.content
        assert response.json()["error"]["code"] == "invalid_identifier"


@pytest.mark.parametrize("name", ["a/b", "../../etc/passwd", "<script>", "canary\n", ""])
def test_group_names_outside_the_alphabet_are_refused(staff, name):
    response = staff.post("/api/v1/groups/", {"name": name}, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_identifier"
    assert not Group.objects.exists()


def test_a_group_with_a_slash_from_before_answers_json_404(staff):
    Group.objects.create(name="a/b")  # written before the rule; identifiers_check lists it
    response = staff.delete("/api/v1/groups/a/b/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_tuf_metadata_names_are_matched_in_full(repo, client):
    assert client.get("/tuf/1.root.json").status_code == 200
    for name in ("1.root.json\n", "root.json\n", "\u0661.root.json"):
        assert client.get(f"/tuf/{quote(name)}").status_code == 404


@pytest.mark.parametrize(
    "argv",
    [
        ["--version", "1.3.0\n"],
        ["--hardware", "esp32\n"],
        ["--name", "kws\n"],
        ["--format", "onnx\n"],
    ],
    ids=["version", "hardware", "name", "format"],
)
def test_fleetctl_publish_refuses_a_trailing_newline(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEET_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FLEET_TOKEN", "t")
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(tmp_path / "release.key"))
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(DATA)
    base = ["publish", str(artifact), "--name", "kws", "--version", "1.3.0"]
    base += ["--hardware", HW, "--format", "onnx"]
    with pytest.raises(SystemExit) as exited:
        cli.main(base + argv)
    assert exited.value.code == 2
    assert "is not a valid" in capsys.readouterr().err


def test_the_agent_refuses_a_hardware_outside_the_alphabet(tmp_path, capsys):
    with pytest.raises(ConfigError, match="hardware"):
        AgentConfig(
            device_id="dev-1",
            hardware="esp32\n",
            server_url="http://x",
            tuf_url="http://x/tuf/",
            broker_url="mqtt://x",
        )
    argv = ["enroll", "--dir", str(tmp_path / "agent"), "--server", "http://127.0.0.1:9"]
    argv += ["--token", "t", "--device-id", "dev-1", "--hardware", "esp32\n"]
    with pytest.raises(SystemExit) as exited:
        agent_cli.main(argv)
    assert exited.value.code == 2
    assert not (tmp_path / "agent").exists()
