"""A director key of the test's own (importable from any test module: tests/ is on sys.path)."""

from pathlib import Path

from fleet.keys import director_private_key


def own_director_key(settings, tmp_path: Path) -> None:
    """Point FLEET_KEYS_DIR at the test's own directory (never var/keys) and make the key
    there now, not in whichever of several threads asks for it first."""
    settings.FLEET_KEYS_DIR = tmp_path / "keys"
    settings.FLEET_KEYS_DIR.mkdir(exist_ok=True)
    director_private_key()
