"""`manage.py director_key`: the director key made once, 0600, never printed, never
replaced by accident; its public half printed for pinning."""

import io
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.management import CommandError, call_command
from django.utils import timezone

from device_agent.protocol.envelope import (
    key_id,
    load_public_key_pem,
    private_key_to_pem,
    read_private_key,
)
from fleet.models import Device


@pytest.fixture
def keys_dir(settings: Any, tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    settings.FLEET_KEYS_DIR = str(directory)
    return directory


def _run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("director_key", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_writes_an_owner_only_p256_key_and_shows_only_its_public_half(
    keys_dir: Path,
) -> None:
    # when
    created, _ = _run("create")
    shown, _ = _run("show-public")

    # then
    path = keys_dir / "director.pem"
    key = read_private_key(path)
    assert isinstance(key.curve, ec.SECP256R1)
    assert (_mode(path), _mode(keys_dir)) == (0o600, 0o700)
    assert key_id(key.public_key()) in created
    assert load_public_key_pem(shown) == key.public_key()
    assert "PRIVATE" not in created + shown


def test_create_refuses_to_replace_an_existing_key(keys_dir: Path) -> None:
    _run("create")
    before = (keys_dir / "director.pem").read_bytes()

    with pytest.raises(CommandError, match="already exists.*--force"):
        _run("create")

    assert (keys_dir / "director.pem").read_bytes() == before


@pytest.mark.django_db
def test_create_force_replaces_the_key_and_names_the_devices_to_enroll_again(
    keys_dir: Path,
) -> None:
    # given a key and two enrolled devices pinning it (a revoked one pins nothing)
    _run("create")
    before = (keys_dir / "director.pem").read_bytes()
    for name in ("cam-1", "cam-2"):
        Device.objects.create(device_id=name, hardware="jetson-orin-fp16")
    Device.objects.create(device_id="cam-3", hardware="jetson-orin-fp16", revoked_at=timezone.now())

    # when
    _, warning = _run("create", "--force")

    # then
    assert (keys_dir / "director.pem").read_bytes() != before
    assert _mode(keys_dir / "director.pem") == 0o600
    assert "2 enrolled devices pin the old key" in warning


def test_show_public_without_a_key_says_how_to_make_one(keys_dir: Path) -> None:
    with pytest.raises(CommandError, match="does not exist.*director_key create"):
        _run("show-public")


@pytest.mark.parametrize(
    "content",
    [
        b"not a key\n",
        private_key_to_pem(ec.generate_private_key(ec.SECP256R1()))[:-40],  # truncated
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    ],
    ids=["garbage", "truncated", "p384"],
)
def test_show_public_refuses_a_file_that_is_no_p256_private_key(
    keys_dir: Path, content: bytes
) -> None:
    keys_dir.mkdir()
    (keys_dir / "director.pem").write_bytes(content)
    (keys_dir / "director.pem").chmod(0o600)

    with pytest.raises(CommandError, match="is not an ECDSA P-256 private key"):
        _run("show-public")


def test_show_public_refuses_a_key_others_can_read(keys_dir: Path) -> None:
    _run("create")
    (keys_dir / "director.pem").chmod(0o644)

    with pytest.raises(CommandError, match=r"readable by others \(mode 0644\)"):
        _run("show-public")


def test_show_public_writes_the_public_key_but_never_over_the_private_one(
    keys_dir: Path, tmp_path: Path
) -> None:
    _run("create")
    private = (keys_dir / "director.pem").read_bytes()

    _run("show-public", "--out", str(tmp_path / "director.pub"))
    with pytest.raises(CommandError, match="private key's own file"):
        _run("show-public", "--out", str(keys_dir / "director.pem"))

    public = load_public_key_pem((tmp_path / "director.pub").read_bytes())
    assert public == read_private_key(keys_dir / "director.pem").public_key()
    assert (keys_dir / "director.pem").read_bytes() == private


def test_a_keys_dir_that_is_a_file_is_refused(keys_dir: Path) -> None:
    keys_dir.write_text("")

    with pytest.raises(CommandError, match="is not a directory"):
        _run("create")


@pytest.mark.parametrize("args", [(), ("rotate",), ("create", "--out", "x")])
def test_unknown_subcommands_and_options_are_usage_errors(
    keys_dir: Path, args: tuple[str, ...]
) -> None:
    with pytest.raises(CommandError):
        _run(*args)
    assert not keys_dir.exists()
