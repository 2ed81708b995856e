"""The ESP32 client's host build (device_agent/esp32/, CMake + CTest) from pytest.

The everyday run builds the C client with the system compiler, runs its CTest suite
(the shared vectors of tests/vectors/, the update agent's runs with power cuts, the heap
and stack measurement, the unit tests), parses every payload the C agent published with
the Python protocol module, and runs `fleet-ota-posix` against a real Mosquitto and an
HTTP artifact server (tests/fleet/test_esp32_mtls.py does so over the production
broker config). The `fuzz` set, which
.ci/run runs separately, builds everything with clang under AddressSanitizer and
UndefinedBehaviorSanitizer and runs the whole suite plus the libFuzzer targets for a
bounded time over the committed seed corpus. Missing tools or libraries skip on a
developer machine and fail under CI=true (the packages are in .ci/run).
"""

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as paho
import pytest
from esp32_build import (
    APT_CLANG,
    Artifacts,
    configure,
    run,
    signed_desired,
)
from mqtt_broker import MosquittoBroker
from paho.mqtt.enums import CallbackAPIVersion
from service_check import require_service

from device_agent.protocol.envelope import (
    generate_director_key,
    write_public_key,
)
from device_agent.protocol.messages import (
    Phase,
    UpdateEvent,
    parse_event,
    parse_state,
    parse_status,
    parse_telemetry,
)

FUZZ_SECONDS = 20


def _ctest(build: Path, *args: str, timeout: float = 300) -> str:
    run(["cmake", "--build", str(build), "-j", "2"], build, timeout=timeout)
    output = run(["ctest", "--output-on-failure", "-j", "2", *args], build, timeout=timeout)
    assert "100% tests passed" in output, output
    return output


def test_host_build_passes_its_ctest_suite(esp32_host: Path) -> None:
    # given the component and its tests built for the host
    build = esp32_host
    # when CTest runs them
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
            event = cast(UpdateEvent, message)
            phases.add(event.phase)
            if event.code is not None:
                codes.add(str(event.code))
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
    configure(
        build,
        "-DFLEET_OTA_FUZZ=ON",
        f"-DFLEET_OTA_FUZZ_SECONDS={FUZZ_SECONDS}",
        cc="clang",
    )
    # when the whole suite runs, fuzzers included (each for FUZZ_SECONDS over the corpus)
    output = _ctest(build, timeout=600)
    # then nothing crashed, leaked or hit undefined behaviour
    for name in (
        "vectors",
        "agent",
        "core",
        "fuzz_envelope",
        "fuzz_desired",
        "fuzz_json",
        "fuzz_acks",
    ):
        assert name in output


# --- the client as a process, through a real broker ---------------------------------

DEVICE = "esp32-e2e"
HARDWARE = "esp32s3-int8"


class Watcher:
    """Every message on the device's topics, decoded."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="esp32-e2e-watch")
        self.client.on_connect = lambda c, *a: c.subscribe(f"fleet/v1/devices/{DEVICE}/#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the watcher did not subscribe"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.messages.append((message.topic.rsplit("/", 1)[1], bytes(message.payload)))

    def event_copies(self) -> dict[str, int]:
        """How many times each event id was published."""
        copies: dict[str, int] = {}
        for event in self.events():
            assert event.event_id is not None, event
            copies[event.event_id] = copies.get(event.event_id, 0) + 1
        return copies

    def publish_acks(self, event_ids: list[str]) -> None:
        payload = json.dumps({"v": 1, "event_ids": event_ids}).encode()
        self.client.publish(f"fleet/v1/devices/{DEVICE}/acks", payload, 0).wait_for_publish(10)

    def events(self) -> list[UpdateEvent]:
        with self.lock:
            return [parse_event(p) for channel, p in self.messages if channel == "events"]

    def publish_desired(self, envelope: bytes) -> None:
        info = self.client.publish(f"fleet/v1/devices/{DEVICE}/desired", envelope, 1, True)
        info.wait_for_publish(10)

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; events: {self.events()}")

    def event(self, seq: int, phase: Phase) -> UpdateEvent:
        def found() -> UpdateEvent | None:
            return next((e for e in self.events() if e.seq == seq and e.phase is phase), None)

        return self.wait_for(found, f"seq {seq} {phase}")

    def last_state(self) -> Any:
        with self.lock:
            states = [p for channel, p in self.messages if channel == "state"]
        return parse_state(states[-1]) if states else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def rig(esp32_host: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    broker = MosquittoBroker(tmp_path / "broker")
    server = Artifacts()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    watcher = Watcher(broker.port)
    key = generate_director_key()
    write_public_key(tmp_path / "director.pem", key.public_key())
    fail_flag = tmp_path / "selftest-fails"
    args = [
            str(esp32_host / "fleet-ota-posix"),
            "--dir", str(tmp_path / "device"),
            "--device-id", DEVICE,
            "--hardware", HARDWARE,
            "--director", str(tmp_path / "director.pem"),
            "--port", str(broker.port),
            "--selftest", f'test -s "$FLEET_MODEL_PATH" && test ! -e {fail_flag}',
    ]  # fmt: skip
    rig: dict[str, Any] = {
        "watcher": watcher,
        "server": server,
        "key": key,
        "args": args,
        "dir": tmp_path / "device",
        "client": subprocess.Popen(args, stderr=subprocess.DEVNULL),
        "fail_flag": fail_flag,
    }
    try:
        yield rig
    finally:
        _stop(rig["client"])
        watcher.close()
        server.shutdown()
        broker.stop()


def _stop(client: subprocess.Popen[Any]) -> None:
    client.send_signal(signal.SIGTERM)
    try:
        client.wait(10)
    finally:
        client.kill()


def _desired(rig: dict[str, Any], seq: int, version: str, counter: int, data: bytes) -> bytes:
    return signed_desired(rig["key"], rig["server"], DEVICE, HARDWARE, seq, version, counter, data)


def test_the_client_updates_verifies_and_rolls_back_through_the_broker(
    rig: dict[str, Any],
) -> None:
    watcher: Watcher = rig["watcher"]
    v1, v2, v3 = (bytes([n]) * 200_000 for n in (1, 2, 3))
    # given the client online
    watcher.wait_for(lambda: watcher.last_state() is not None, "the first state report")

    # when the director asks for 1.0.0: it is downloaded, verified, swapped and committed
    install = _desired(rig, 1, "1.0.0", 10, v1)
    watcher.publish_desired(install)
    watcher.event(1, Phase.COMMITTED)
    state = watcher.wait_for(
        lambda: (s := watcher.last_state()) and s.models and s.last_seq == 1 and s, "state"
    )
    assert (state.models[0].version, str(state.models[0].slot)) == ("1.0.0", "a")

    # when a rogue store serves other bytes for 1.1.0: failed, hash_mismatch, 1.0.0 kept
    wrong = _desired(rig, 2, "1.1.0", 11, v2)
    rig["server"].lie["kws-1.1.0.tflite"] = v3
    watcher.publish_desired(wrong)
    assert watcher.event(2, Phase.FAILED).code == "hash_mismatch"

    # when the store serves 1.1.1 one byte short, or 1.1.2 one byte long: failed, kept
    rig["server"].lie["kws-1.1.1.tflite"] = v2[:-1]
    watcher.publish_desired(_desired(rig, 3, "1.1.1", 11, v2))
    assert watcher.event(3, Phase.FAILED).code == "hash_mismatch"
    rig["server"].lie["kws-1.1.2.tflite"] = v2 + b"\x00"
    watcher.publish_desired(_desired(rig, 4, "1.1.2", 11, v2))
    assert watcher.event(4, Phase.FAILED).code == "length_exceeded"

    # when 1.2.0's self-test fails: rolled back to 1.0.0, health_check_failed
    rig["fail_flag"].touch()
    watcher.publish_desired(_desired(rig, 5, "1.2.0", 12, v2))
    assert watcher.event(5, Phase.ROLLED_BACK).code == "health_check_failed"
    state = watcher.wait_for(lambda: (s := watcher.last_state()) and s.last_seq == 5 and s, "state")
    assert (state.models[0].version, str(state.models[0].slot)) == ("1.0.0", "a")

    # when an old envelope is replayed, or one is signed by another key: rejected
    watcher.publish_desired(install)
    assert watcher.event(1, Phase.REJECTED).code == "replayed_command"
    other = dict(rig, key=generate_director_key())
    watcher.publish_desired(_desired(other, 6, "1.3.0", 13, v2))
    assert watcher.event(0, Phase.REJECTED).code == "signature_invalid"

    # then a good update still goes through, and every event is one the bridge accepts
    rig["fail_flag"].unlink()
    watcher.publish_desired(_desired(rig, 7, "1.3.0", 13, v2))
    watcher.event(7, Phase.COMMITTED)
    state = watcher.wait_for(lambda: (s := watcher.last_state()) and s.last_seq == 7 and s, "state")
    assert (state.models[0].version, str(state.models[0].slot)) == ("1.3.0", "b")


def test_the_client_sends_events_again_until_the_server_confirms_them(
    rig: dict[str, Any],
) -> None:
    watcher: Watcher = rig["watcher"]
    watcher.wait_for(lambda: watcher.last_state() is not None, "the first state report")
    # given an install whose events nobody confirms
    watcher.publish_desired(_desired(rig, 1, "1.0.0", 10, bytes([1]) * 50_000))
    committed = watcher.event(1, Phase.COMMITTED)
    # then each is published again (5 s after the first try)
    ids = [cast(str, e.event_id) for e in watcher.events() if e.seq == 1]
    assert len(ids) == len(set(ids)) >= 5, ids
    watcher.wait_for(lambda: all(watcher.event_copies()[i] >= 2 for i in ids), "resent events")

    # when the server confirms all but the committed event and the client restarts
    confirmed = [i for i in ids if i != committed.event_id]
    watcher.publish_acks(confirmed)
    records = list(rig["dir"].glob("ev*.rec"))
    assert records, "the client keeps its events in records ev0..ev15"
    watcher.wait_for(
        lambda: not any(i.encode() in r.read_bytes() for r in records for i in confirmed),
        "the confirmed events gone from the client's event records",
    )
    _stop(rig["client"])
    before = watcher.event_copies()
    rig["client"] = subprocess.Popen(rig["args"], stderr=subprocess.DEVNULL)

    # then only the unconfirmed event comes again, from the disk, with its id
    def resent() -> bool:
        return (
            watcher.event_copies().get(str(committed.event_id), 0) > before[str(committed.event_id)]
        )

    watcher.wait_for(resent, "the unconfirmed event after the restart")
    watcher.publish_acks([str(committed.event_id)])
    after = watcher.event_copies()
    # the confirmed ones were not among what the restarted client sent from its disk
    assert all(after[i] == before[i] for i in confirmed), (before, after)
