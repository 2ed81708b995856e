"""CI release key pairs for tests (importable from any test module: tests/ is on sys.path)."""

from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import Signer

from ota.signing import keypair_generate, signer_load


@dataclass
class ReleaseKeyFiles:
    private: Path
    public: Path
    signer: Signer


def make_release_key(directory: Path) -> ReleaseKeyFiles:
    directory.mkdir(parents=True, exist_ok=True)
    keypair_generate(directory / "release.key", directory / "release.pub")
    return ReleaseKeyFiles(
        directory / "release.key", directory / "release.pub", signer_load(directory / "release.key")
    )
