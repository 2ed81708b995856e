"""The director's online signing key (ECDSA P-256), generated on first use when embedded."""

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
from device_agent.protocol.fsutil import create_once

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
