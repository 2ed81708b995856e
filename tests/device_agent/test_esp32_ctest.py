"""The ESP32 client's host build (device_agent/esp32/, CMake + CTest) from pytest.

The everyday run builds the C core with the system compiler and runs its CTest suite
(the shared vectors of tests/vectors/ and the unit tests). The `fuzz` set, which
.ci/run runs separately, builds everything with clang under AddressSanitizer and
UndefinedBehaviorSanitizer and runs the whole suite plus the libFuzzer targets for a
bounded time over the committed seed corpus. Missing tools or libraries skip on a
developer machine and fail under CI=true (the packages are in .ci/run).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from service_check import require_service

from device_agent.protocol.messages import (
    Phase,
    parse_event,
    parse_state,
    parse_status,
    parse_telemetry,
)

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "device_agent" / "esp32"
APT = "apt-get install cmake gcc libmbedtls-dev"
APT_CLANG = "apt-get install clang libclang-rt-dev"
FUZZ_SECONDS = 20


def _run(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{output[-6000:]}"
    return output


def _configure(build: Path, *options: str, cc: str | None = None) -> None:
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
    if done.returncode != 0 and ("MBEDTLS" in output or "MBEDCRYPTO" in output):
        require_service(False, "mbedTLS (libmbedtls-dev)", APT)
    if done.returncode != 0 and "No CMAKE_C_COMPILER could be found" in output:
        require_service(False, "a C compiler", APT)
    assert done.returncode == 0, output[-6000:]


def _ctest(build: Path, *args: str, timeout: float = 300) -> str:
    _run(["cmake", "--build", str(build), "-j", "2"], build, timeout=timeout)
    output = _run(["ctest", "--output-on-failure", "-j", "2", *args], build, timeout=timeout)
    assert "100% tests passed" in output, output
    return output


def test_host_build_passes_its_ctest_suite(tmp_path: Path) -> None:
    # given the component and its tests configured for the host
    build = tmp_path / "build"
    _configure(build)
    # when built and run
    output = _ctest(build)
    # then the vectors, the agent's update and power-cut runs and the unit tests passed
    for name in ("vectors", "agent", "core"):
        assert name in output
    _check_published(build / "published.txt")


def _check_published(path: Path) -> None:
    """Every report the C agent published is a valid message to the Python side's
    parsers, and the runs reported each outcome the tests drove."""
    parsers = {
        "events": parse_event,
        "state": parse_state,
        "status": parse_status,
        "telemetry": parse_telemetry,
    }
    phases: set[Phase] = set()
    codes: set[str] = set()
    lines = path.read_text().splitlines()
    assert lines
    for line in lines:
        channel, _, payload = line.partition(" ")
        message = parsers[channel](payload.encode())
        if channel == "events":
            phases.add(message.phase)  # type: ignore[attr-defined]
            if message.code is not None:  # type: ignore[attr-defined]
                codes.add(str(message.code))  # type: ignore[attr-defined]
    assert {Phase.COMMITTED, Phase.ROLLED_BACK, Phase.FAILED, Phase.DOWNLOADING} <= phases
    assert {"health_check_failed", "hash_mismatch", "length_exceeded"} <= codes


def _clang_runtime_present() -> bool:
    clang = shutil.which("clang")
    if clang is None:
        return False
    runtime = subprocess.run(
        [clang, "--print-runtime-dir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return all(
        (Path(runtime) / f"libclang_rt.{name}-x86_64.a").exists() for name in ("asan", "fuzzer")
    )


@pytest.mark.fuzz
def test_sanitized_suite_and_fuzzers_pass(tmp_path: Path) -> None:
    require_service(_clang_runtime_present(), "clang with its sanitizer runtime", APT_CLANG)
    # given everything built by clang with ASan + UBSan, and the libFuzzer targets
    build = tmp_path / "build"
    _configure(
        build,
        "-DFLEET_OTA_FUZZ=ON",
        f"-DFLEET_OTA_FUZZ_SECONDS={FUZZ_SECONDS}",
        cc="clang",
    )
    # when the whole suite runs, fuzzers included (each for FUZZ_SECONDS over the corpus)
    output = _ctest(build, timeout=600)
    # then nothing crashed, leaked or hit undefined behaviour
    for name in ("vectors", "core", "fuzz_envelope", "fuzz_desired", "fuzz_json"):
        assert name in output
