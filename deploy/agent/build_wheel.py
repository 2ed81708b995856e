"""Build the `fleet-agent` wheel: the on-device agent alone, installable on Python 3.11.

    python deploy/agent/build_wheel.py [--out DIR]      # default DIR: dist/

Stages a copy of this directory's pyproject.toml and README.md with the agent's Python
files (device_agent/ and device_agent/protocol/, nothing else) in a temporary directory,
builds it with `pip wheel` (setuptools in an isolated build environment), checks that the
wheel holds nothing but those two packages, and prints the wheel's path.

Why staging rather than a pyproject.toml inside device_agent/ with a package-dir mapping:
setuptools then builds inside the source tree (build/, *.egg-info next to the agent's
code), an sdist would sweep in whatever sits in device_agent/ (ruff.toml, caches, the
ESP32 stub), and tools that look for the nearest pyproject.toml (pytest, ruff, mypy) would
find a second project inside the first. A staged copy holds exactly what ships.

Stdlib only; runs on Python 3.11 too.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SOURCE = ROOT / "device_agent"
# Must match [tool.setuptools] packages in pyproject.toml beside this file.
PACKAGES = ("device_agent", "device_agent/protocol")


class BuildError(Exception):
    pass


def _stage(stage: Path) -> None:
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(HERE / name, stage / name)
    shipped = {SOURCE.parent / package for package in PACKAGES}
    found = {p.parent for p in SOURCE.rglob("*.py") if "__pycache__" not in p.parts}
    if unknown := sorted(str(d.relative_to(ROOT)) for d in found - shipped):
        # A new subpackage would silently be left out of the wheel.
        raise BuildError(f"{', '.join(unknown)}: add to PACKAGES here and to pyproject.toml")
    for package in PACKAGES:
        target = stage / package
        target.mkdir(parents=True)
        for module in sorted((SOURCE.parent / package).glob("*.py")):
            shutil.copy2(module, target / module.name)


def check_wheel(wheel: Path) -> None:
    """Only the agent's packages and the wheel's own metadata, nothing else."""
    allowed = {f"{package}/" for package in PACKAGES}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            top = name.split("/", 1)[0]
            if top.endswith(".dist-info"):
                continue
            if name.rsplit("/", 1)[0] + "/" not in allowed or not name.endswith(".py"):
                raise BuildError(f"{wheel.name} holds {name}, which is not the agent's code")


def build(out: Path) -> Path:
    """Build the wheel into `out` and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleet-agent-build-") as tmp:
        stage, wheels = Path(tmp) / "src", Path(tmp) / "wheels"
        stage.mkdir()
        _stage(stage)
        done = subprocess.run(  # noqa: S603 - this interpreter's own pip
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "--wheel-dir",
                str(wheels),
                str(stage),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BuildError(f"pip wheel failed:\n{done.stdout}{done.stderr}")
        (built,) = wheels.glob("fleet_agent-*.whl")
        check_wheel(built)
        target = out / built.name
        shutil.move(built, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory")
    args = parser.parse_args(argv)
    try:
        wheel = build(args.out.resolve())
    except BuildError as exc:
        print(f"build_wheel: {exc}", file=sys.stderr)
        return 1
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
