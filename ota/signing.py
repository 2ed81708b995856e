"""Key files and TUF signers, shared by the server and ``fleetctl`` (imports no Django).

Keys are Ed25519, stored as PEM: the private key PKCS#8 with mode 0600, the public key
as SubjectPublicKeyInfo. The TUF key id is securesystemslib's (sha256 of the canonical
public key dict), so it is the same wherever the key is loaded.
"""

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, Key, SSlibKey


class KeyFileError(Exception):
    """A key file is missing, unreadable or not an Ed25519 key."""


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never overwrite a key by accident.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def keypair_generate(private_path: Path, public_path: Path | None = None) -> Key:
    """Write a new Ed25519 key pair; returns the public TUF key."""
    private = Ed25519PrivateKey.generate()
    _write_private(
        private_path,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    if public_path is not None:
        public_path.write_bytes(public_pem(private.public_key()))
    return SSlibKey.from_crypto(private.public_key())


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signer_load(private_path: Path) -> CryptoSigner:
    """A TUF signer for a private key file."""
    try:
        data = private_path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {private_path}: {exc.strerror}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{private_path} is not an unencrypted PEM private key") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{private_path} is not an Ed25519 key")
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def public_key_from_pem(data: bytes) -> Key:
    """The TUF key for a PEM public key (or a private key, whose public half is used)."""
    try:
        if b"PRIVATE KEY" in data:
            raise KeyFileError("this is a private key: register the public key (.pub) only")
        public = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError("not a PEM public key") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise KeyFileError("release keys must be Ed25519")
    return SSlibKey.from_crypto(public)
