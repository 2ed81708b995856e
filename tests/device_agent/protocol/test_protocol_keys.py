"""Director keys: generate, PEM in and out, files; only ECDSA P-256 is ever loaded."""

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from device_agent.protocol.envelope import (
    generate_director_key,
    key_id,
    load_private_key_pem,
    load_public_key_pem,
    private_key_to_pem,
    public_key_to_pem,
    read_private_key,
    read_public_key,
    write_private_key,
    write_public_key,
)
from device_agent.protocol.errors import ErrorCode
from device_agent.protocol.exceptions import ProtocolError


def test_generated_key_is_p256() -> None:
    assert isinstance(generate_director_key().curve, ec.SECP256R1)


def test_pem_round_trip(director_key: ec.EllipticCurvePrivateKey) -> None:
    loaded = load_private_key_pem(private_key_to_pem(director_key))
    public = load_public_key_pem(public_key_to_pem(director_key.public_key()))

    assert key_id(loaded.public_key()) == key_id(public) == key_id(director_key.public_key())


def test_encrypted_pem_needs_the_password(director_key: ec.EllipticCurvePrivateKey) -> None:
    pem = private_key_to_pem(director_key, password=b"s3cret")

    assert b"ENCRYPTED" in pem
    assert load_private_key_pem(pem, password=b"s3cret").private_numbers() == (
        director_key.private_numbers()
    )
    with pytest.raises(ProtocolError):
        load_private_key_pem(pem)
    with pytest.raises(ProtocolError):
        load_private_key_pem(pem, password=b"wrong")


def test_files_are_written_atomically_with_tight_modes(
    tmp_path: Path, director_key: ec.EllipticCurvePrivateKey
) -> None:
    # given an older key already in place
    write_private_key(tmp_path / "director.key", generate_director_key())

    # when
    write_private_key(tmp_path / "director.key", director_key)
    write_public_key(tmp_path / "director.pem", director_key.public_key())

    # then
    assert stat.S_IMODE((tmp_path / "director.key").stat().st_mode) == 0o600
    assert read_private_key(tmp_path / "director.key").private_numbers() == (
        director_key.private_numbers()
    )
    assert key_id(read_public_key(tmp_path / "director.pem")) == key_id(director_key.public_key())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["director.key", "director.pem"]


OTHER_KEYS = [
    pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
    pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
]


@pytest.mark.parametrize("make_key", OTHER_KEYS)
def test_other_key_types_refused(make_key: type) -> None:
    key = make_key()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    for load, pem in ((load_private_key_pem, private_pem), (load_public_key_pem, public_pem)):
        with pytest.raises(ProtocolError) as caught:
            load(pem)
        assert caught.value.code == ErrorCode.SIGNATURE_INVALID


@pytest.mark.parametrize("pem", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\n-----END"])
def test_garbage_pem_refused(pem: bytes) -> None:
    for load in (load_private_key_pem, load_public_key_pem):
        with pytest.raises(ProtocolError) as caught:
            load(pem)
        assert caught.value.code == ErrorCode.MALFORMED
