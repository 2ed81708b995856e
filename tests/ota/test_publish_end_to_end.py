"""CI publishes with fleetctl against a running server; a TUF client fetches the model."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tuf.ngclient import Updater

from ota import cli


def _updater(live_server, tmp_path: Path) -> Updater:
    import urllib.request

    metadata_dir = tmp_path / "client" / "metadata"
    metadata_dir.mkdir(parents=True)
    with urllib.request.urlopen(f"{live_server.url}/tuf/1.root.json") as r:  # noqa: S310
        root = r.read()
    target_dir = tmp_path / "client" / "targets"
    target_dir.mkdir()
    return Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{live_server.url}/tuf/",
        target_base_url=f"{live_server.url}/tuf/targets/",
        target_dir=str(target_dir),
        bootstrap=root,
    )


@pytest.mark.django_db(transaction=True)
def test_fleetctl_publish_then_ngclient_downloads(
    live_server, kws, release_key, ci_token, tmp_path, monkeypatch, capsys
):
    # given a model file and CI's environment
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(os.urandom(300_000))
    monkeypatch.setenv("FLEET_URL", live_server.url)
    monkeypatch.setenv("FLEET_TOKEN", ci_token)
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(release_key.private))

    # when CI publishes two versions
    assert (
        cli.main(
            [
                "publish",
                str(model_file),
                "--name",
                "kws",
                "--version",
                "1.0.0",
                "--hardware",
                "linux-x86_64-fp32",
                "--format",
                "onnx",
                "--meta",
                "quantization=fp32",
                "--meta",
                'metrics={"accuracy": 0.93}',
            ]
        )
        == 0
    )
    # for people by default
    assert capsys.readouterr().out.startswith(
        "published kws 1.0.0 for linux-x86_64-fp32 (onnx), release counter 1\n"
        "  target  models/kws/1.0.0/linux-x86_64-fp32/model.onnx\n"
    )
    second = tmp_path / "v2" / "model.onnx"
    second.parent.mkdir()
    second.write_bytes(os.urandom(1000))
    assert (
        cli.main(
            [
                "publish",
                str(second),
                "--name",
                "kws",
                "--version",
                "1.1.0",
                "--hardware",
                "linux-x86_64-fp32",
                "--format",
                "onnx",
                "--json",
            ]
        )
        == 0
    )
    published = json.loads(capsys.readouterr().out)  # for scripts with --json
    assert (published["version"], published["release_counter"]) == ("1.1.0", 2)

    # then a TUF client bootstrapped with the served root finds and downloads it
    updater = _updater(live_server, tmp_path)
    updater.refresh()
    info = updater.get_targetinfo("models/kws/1.0.0/linux-x86_64-fp32/model.onnx")
    assert info is not None
    assert info.custom["release_counter"] == 1
    assert info.custom["metrics"] == {"accuracy": "0.93"}
    path = updater.download_target(info)
    assert (
        hashlib.sha256(Path(path).read_bytes()).hexdigest()
        == hashlib.sha256(model_file.read_bytes()).hexdigest()
    )
    newer = updater.get_targetinfo("models/kws/1.1.0/linux-x86_64-fp32/model.onnx")
    assert newer is not None
    assert newer.custom["release_counter"] == 2


@pytest.mark.django_db(transaction=True)
def test_fleetctl_console_script_reports_errors_with_codes(
    live_server, kws, release_key, ci_token, tmp_path
):
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"x" * 100)
    env = {
        **os.environ,
        "FLEET_URL": live_server.url,
        "FLEET_TOKEN": ci_token,
        "FLEET_RELEASE_KEY": str(release_key.private),
    }
    fleetctl = Path(sys.executable).parent / "fleetctl"
    ok = subprocess.run(
        [
            str(fleetctl),
            "publish",
            str(model_file),
            "--name",
            "kws",
            "--version",
            "2.0.0",
            "--hardware",
            "esp32s3-int8",
            "--format",
            "tflite",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    again = subprocess.run(
        [
            str(fleetctl),
            "publish",
            str(model_file),
            "--name",
            "kws",
            "--version",
            "2.0.0",
            "--hardware",
            "esp32s3-int8",
            "--format",
            "tflite",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1
    assert "version_exists" in again.stderr
