"""The director's online signing key (ECDSA P-256), generated on first use when embedded.

In production an operator makes it once with ``manage.py director_key create``; devices
pin its public half at enrollment (docs/security.md), so it is never rotated in place.
"""

import os
import stat
import threading
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

from device_agent.protocol.envelope import (
    generate_director_key,
    private_key_to_pem,
    public_key_to_pem,
    read_private_key,
)
from device_agent.protocol.exceptions import ProtocolError
from device_agent.protocol.fsutil import create_once, write_atomic

DIRECTOR_KEY_FILE = "director.pem"


def director_key_path() -> Path:
    return Path(settings.FLEET_KEYS_DIR) / DIRECTOR_KEY_FILE


_create_lock = threading.Lock()


@cache
def _load(path: Path) -> ec.EllipticCurvePrivateKey:
    with _create_lock:  # two threads must not both create it
        if not path.exists():
            if settings.PRODUCTION:
                raise RuntimeError(f"the director key {path} is missing (FLEET_KEYS_DIR)")
            create_key_once(path)
    return read_private_key(path)


def create_key_once(path: Path) -> None:
    """Create the key file unless another process has: every process then reads one key.

    Several processes create it at once on a fresh embedded start (gunicorn's workers, the
    bridge, the Celery worker); a shared temporary name failed one writer's rename, a 500
    on the first enrollments.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    create_once(path, private_key_to_pem(generate_director_key()), mode=0o600)


def director_private_key() -> ec.EllipticCurvePrivateKey:
    return _load(director_key_path())


def director_public_pem() -> bytes:
    return public_key_to_pem(director_private_key().public_key())


class DirectorKeyError(Exception):
    """A director key file that cannot be created or used, said so the operator can act."""


def director_key_create(*, path: Path, replace: bool = False) -> ec.EllipticCurvePublicKey:
    """Write a new director key to `path` (0600, its directory 0700); returns its public half.

    An existing file is kept unless `replace`: devices pin the public key at enrollment,
    so a new key makes every enrolled device refuse desired states until it enrolls again.
    """
    if path.parent.exists() and not path.parent.is_dir():
        raise DirectorKeyError(f"{path.parent} is not a directory (FLEET_KEYS_DIR)")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = generate_director_key()
    pem = private_key_to_pem(key)
    if replace:
        write_atomic(path, pem, mode=0o600)
        os.chmod(path, 0o600)  # os.replace keeps the new file's mode; a umask may not
    else:
        before = path.read_bytes() if path.exists() else None
        if before is None:
            create_once(path, pem, mode=0o600)
        if before is not None or path.read_bytes() != pem:
            raise DirectorKeyError(
                f"{path} already exists; devices pin its public key at enrollment "
                "(replace it with --force only if every device will enroll again)"
            )
    return key.public_key()


def director_key_read(*, path: Path) -> ec.EllipticCurvePrivateKey:
    """The director key at `path`, refused when missing, unreadable, not P-256 or not 0600."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        key = read_private_key(path)
    except FileNotFoundError:
        raise DirectorKeyError(
            f"{path} does not exist: make it with `manage.py director_key create`"
        ) from None
    except OSError as exc:
        raise DirectorKeyError(f"cannot read {path}: {exc.strerror}") from None
    except ProtocolError as exc:
        raise DirectorKeyError(f"{path} is not an ECDSA P-256 private key: {exc.detail}") from None
    if mode & 0o077:
        raise DirectorKeyError(f"{path} is readable by others (mode {mode:04o}): chmod 0600 it")
    return key
