"""Rotating release keys and top-level TUF keys keeps existing devices updating."""

import hashlib
import json
import urllib.request
from pathlib import Path

import pytest
from django.core.management import call_command
from release_keys import make_release_key
from tuf.ngclient import Updater

from ota import cli
from ota.repository import key_path


def _updater(url: str, tmp_path: Path, name: str) -> Updater:
    """A TUF client; the first one for ``name`` is bootstrapped with root v1, later ones
    start from the root it stored (an Updater refreshes only once)."""
    metadata_dir = tmp_path / name / "metadata"
    root: bytes | None = None
    if not metadata_dir.exists():
        metadata_dir.mkdir(parents=True)
        (tmp_path / name / "targets").mkdir()
        with urllib.request.urlopen(f"{url}/tuf/1.root.json") as r:  # noqa: S310
            root = r.read()
    return Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{url}/tuf/",
        target_base_url=f"{url}/tuf/targets/",
        target_dir=str(tmp_path / name / "targets"),
        bootstrap=root,
    )


def _publish(path: Path, version: str, hardware: str = "linux-x86_64-fp32") -> int:
    return cli.main(
        [
            "publish",
            str(path),
            "--name",
            "kws",
            "--version",
            version,
            "--hardware",
            hardware,
            "--format",
            "onnx",
        ]
    )


@pytest.fixture
def ci_env(live_server, ci_token, release_key, monkeypatch):
    monkeypatch.setenv("FLEET_URL", live_server.url)
    monkeypatch.setenv("FLEET_TOKEN", ci_token)
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(release_key.private))
    return live_server.url


@pytest.mark.django_db(transaction=True)
def test_release_key_rotation(ci_env, kws, release_key, tmp_path, monkeypatch, capsys):
    # given a device that trusts what was published with the old key
    model = tmp_path / "model.onnx"
    model.write_bytes(b"v1" * 1000)
    assert _publish(model, "1.0.0") == 0
    device = _updater(ci_env, tmp_path, "device")
    device.refresh()
    assert device.get_targetinfo("models/kws/1.0.0/linux-x86_64-fp32/model.onnx")

    # when the operator adds a new key, CI re-signs with it and the old key is revoked
    new_key = make_release_key(tmp_path / "new-key")
    call_command("release_key", "add", "kws", str(new_key.public))
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(new_key.private))
    assert cli.main(["resign", "--name", "kws"]) == 0
    call_command("release_key", "revoke", release_key.signer.public_key.keyid, "--reason", "rotate")

    # then the old key can no longer publish, the new one can
    model2 = tmp_path / "m2" / "model.onnx"
    model2.parent.mkdir()
    model2.write_bytes(b"v2" * 1000)
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(release_key.private))
    capsys.readouterr()
    assert _publish(model2, "1.1.0") == 1
    assert "forbidden" in capsys.readouterr().err
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(new_key.private))
    assert _publish(model2, "1.1.0") == 0

    # and the device, refreshing, sees old and new targets under the new key
    device = _updater(ci_env, tmp_path, "device-after")
    device.refresh()
    old = device.get_targetinfo("models/kws/1.0.0/linux-x86_64-fp32/model.onnx")
    new = device.get_targetinfo("models/kws/1.1.0/linux-x86_64-fp32/model.onnx")
    assert old is not None
    assert new is not None
    downloaded = Path(device.download_target(new)).read_bytes()
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(model2.read_bytes()).digest()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_top_level_key_rotation_is_followed_by_existing_clients(ci_env, kws, tmp_path, role):
    # given a device that has already refreshed once with root v1
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights" * 500)
    assert _publish(model, "1.0.0") == 0
    device = _updater(ci_env, tmp_path, "device")
    device.refresh()
    old_public = key_path(role).read_bytes()

    # when the role's key is rotated
    call_command("tuf_rotate_key", role)

    # then the key file changed, and the same device walks to the new root and still updates
    assert key_path(role).read_bytes() != old_public
    assert _publish(model, "1.1.0", hardware="esp32s3-int8") == 0
    device = _updater(ci_env, tmp_path, "device")
    device.refresh()
    trusted_root = json.loads((tmp_path / "device" / "metadata" / "root.json").read_bytes())
    assert trusted_root["signed"]["version"] == 2
    info = device.get_targetinfo("models/kws/1.1.0/esp32s3-int8/model.onnx")
    assert info is not None
    assert Path(device.download_target(info)).read_bytes() == model.read_bytes()
