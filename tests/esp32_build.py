"""The ESP32 client's host build (device_agent/esp32/) for tests, and an artifact server.

Importable from any test module (tests/ is on sys.path). Missing tools or libraries
skip on a developer machine and fail under CI=true (.ci/run installs them).
"""

import hashlib
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from service_check import require_service

from device_agent.protocol.envelope import sign_desired
from device_agent.protocol.messages import DesiredState, ModelTarget

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "device_agent" / "esp32"
APT = "apt-get install cmake gcc libmbedtls-dev libmosquitto-dev libcurl4-openssl-dev"
APT_CLANG = "apt-get install clang libclang-rt-dev"
# What CMake names when a library or tool it requires is missing.
MISSING = ("MBEDTLS", "MBEDCRYPTO", "MBEDX509", "MOSQUITTO", "CURL", "No CMAKE_C_COMPILER")


def run(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{output[-6000:]}"
    return output


def configure(build: Path, *options: str, cc: str | None = None) -> None:
    require_service(shutil.which("cmake") is not None, "cmake", APT)
    env = dict(os.environ)
    if cc is not None:
        env["CC"] = cc
    done = subprocess.run(
        ["cmake", "-S", str(SOURCE), "-B", str(build), *options],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0 and any(name in output for name in MISSING):
        require_service(False, "the ESP32 host build's tools and libraries", APT)
    assert done.returncode == 0, output[-6000:]


def esp32_host_build(build: Path) -> Path:
    """Configure and build into `build` (with the system compiler); returns it."""
    configure(build)
    run(["cmake", "--build", str(build), "-j", "2"], build, timeout=300)
    return build


class Artifacts(ThreadingHTTPServer):
    """Serves /<name> from `files`, with Range requests, as the artifact store would;
    `lie` makes it serve other bytes for a name (a rogue server)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ArtifactHandler)
        self.files: dict[str, bytes] = {}
        self.lie: dict[str, bytes] = {}
        self.ranges: list[str] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _ArtifactHandler(BaseHTTPRequestHandler):
    server: Artifacts

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        data = self.server.lie.get(name, self.server.files.get(name))
        if data is None:
            self.send_error(404)
            return
        start = 0
        wanted = self.headers.get("Range")
        if wanted:
            self.server.ranges.append(wanted)
            start = int(wanted.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        return None


def signed_desired(
    key: ec.EllipticCurvePrivateKey,
    server: Artifacts,
    device_id: str,
    hardware: str,
    seq: int,
    version: str,
    counter: int,
    data: bytes,
) -> bytes:
    """A desired state for model `kws` at `version`, its bytes served by `server`, signed
    by `key` with the director's code."""
    name = f"kws-{version}.tflite"
    server.files[name] = data
    now = datetime.now(UTC).replace(microsecond=0)
    target = ModelTarget(
        name="kws",
        path=f"models/kws/{version}/{hardware}/model.tflite",
        version=version,
        release_counter=counter,
        hardware=hardware,
        sha256=hashlib.sha256(data).hexdigest(),
        length=len(data),
        url=server.url(name),
        rollout_id="r-1",
        arm="a",
    )
    desired = DesiredState(
        device_id=device_id,
        seq=seq,
        issued_at=now,
        expires_at=now + timedelta(days=7),
        models=(target,),
    )
    return sign_desired(desired, key)
