"""Telemetry end to end: `fleet-agent run` as a real process against a real Mosquitto. An
application calls report() (or `fleet-agent report`), and a subscriber on the device's
`telemetry` topic receives the batch tagged with the installed version and the rollout
and arm of the last desired state; the simulated application reports measured latency of
the installed ONNX model; the server's own bridge decoding and ingest store the batches."""

import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from agent_device import Device, FakeTuf, Release
from agent_harness import REPO, agent_cli, agent_env
from agent_http import Behaviour, file_server
from agent_models import chain_onnx
from paho.mqtt.enums import CallbackAPIVersion
from service_check import require_module

from device_agent.config import AgentConfig
from device_agent.metrics_client import report
from device_agent.protocol.messages import TelemetrySample, parse_telemetry
from device_agent.protocol.topics import Channel, topic_for

DEVICE = "dev-1"


@dataclasses.dataclass
class Template:
    directory: Path
    device: Device
    release: Release


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """An agent directory with an ONNX kws 1.0.0 committed (rollout r-1, no arm)."""
    require_module("onnxruntime", "pip install -e '.[dev]' (deploy/dev/venv.sh)")
    v1 = Release("1.0.0", 1, chain_onnx(4), fmt="onnx")
    device = Device(tmp_path_factory.mktemp("telemetry") / "template")
    device.tuf = FakeTuf([v1])
    with file_server(Behaviour(data=v1.data)) as url:
        device.runner().handle_desired(device.envelope(1, [v1.target(url, rollout_id="r-1")]))
    assert device.publisher.phases(1)[-1] == "committed", device.publisher.events
    return Template(device.root, device, v1)


class TelemetryWatcher:
    """A paho subscriber on the device's telemetry topic (QoS 1)."""

    def __init__(self, port: int) -> None:
        self.payloads: list[bytes] = []
        self.changed = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="telemetry-watch")
        subscribed = threading.Event()

        def on_connect(c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe(topic_for(DEVICE, Channel.TELEMETRY), qos=1)

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            with self.changed:
                self.payloads.append(bytes(msg.payload))
                self.changed.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "could not subscribe"

    def samples(self) -> list[TelemetrySample]:
        return [s for p in list(self.payloads) for s in parse_telemetry(p).samples]

    def wait_for(self, predicate: Any, what: str, log: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (result := predicate()):
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}\n--- agent ---\n{log()}")
                self.changed.wait(0.2)
        return result

    def send_desired(self, envelope: bytes) -> None:
        topic = topic_for(DEVICE, Channel.DESIRED)
        self.client.publish(topic, envelope, qos=1, retain=True).wait_for_publish(10)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclasses.dataclass
class Running:
    directory: Path
    device: Device
    watcher: TelemetryWatcher
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _start(
    template: Template, tmp_path: Path, port: int, *args: str, **config: Any
) -> Iterator[Running]:
    directory = tmp_path / "agent"
    shutil.copytree(template.directory, directory, symlinks=True)
    settings = AgentConfig.load(directory)
    settings = dataclasses.replace(
        settings, broker_url=f"mqtt://127.0.0.1:{port}", telemetry_batch_seconds=0.2, **config
    )
    settings.save(directory)
    watcher = TelemetryWatcher(port)
    log_path = tmp_path / "agent.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "device_agent.cli", "-v", "run", "--dir", str(directory), *args],
            cwd=REPO,
            env=agent_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Running(directory, template.device, watcher, process, log_path)
    try:
        socket_path = directory / "metrics.sock"
        running.watcher.wait_for(socket_path.exists, "the metrics socket", running.log)
        yield running
    finally:
        running.stop()
        watcher.stop()


@pytest.fixture
def agent(template: Template, tmp_path: Path, mosquitto: Any) -> Iterator[Running]:
    yield from _start(template, tmp_path, mosquitto.port)


def test_an_app_report_arrives_on_telemetry_with_version_rollout_and_arm(
    agent: Running, template: Template
) -> None:
    # given the device is put in arm B of rollout r-7, which keeps the installed 1.0.0
    target = template.release.target("http://127.0.0.1:9/unused", rollout_id="r-7", arm="B")
    agent.watcher.send_desired(agent.device.envelope(2, [target]))
    agent.watcher.wait_for(
        lambda: json.loads((agent.directory / "state.json").read_text())["last_seq"] == 2,
        "desired seq 2 accepted",
        agent.log,
    )
    socket_path = agent.directory / "metrics.sock"

    # when the application reports a sample, and one of a model the device does not run
    assert report("kws", latency_ms=12.5, confidence=0.93, socket_path=socket_path)
    assert report("vad", latency_ms=1.0, socket_path=socket_path)

    # then a batch with it arrives on the device's telemetry topic
    (sample,) = agent.watcher.wait_for(agent.watcher.samples, "the telemetry batch", agent.log)
    assert (sample.model, sample.version, sample.rollout_id, sample.arm) == (
        "kws",
        "1.0.0",
        "r-7",
        "B",
    )
    assert sample.metrics == {"latency_ms": 12.5, "confidence": 0.93}
    assert abs((datetime.now(UTC) - sample.ts).total_seconds()) < 30

    # and `fleet-agent report` goes the same way
    sent = agent_cli("report", "--dir", str(agent.directory), "kws", "latency_ms=7", "top1=2")
    assert sent.returncode == 0, sent.stderr
    agent.watcher.wait_for(lambda: len(agent.watcher.samples()) == 2, "the CLI sample", agent.log)
    assert agent.watcher.samples()[1].metrics == {"latency_ms": 7.0, "top1": 2.0}

    # and once stopped, `fleet-agent status` shows what became of the samples
    assert agent.stop() == 0
    status = json.loads(agent_cli("status", "--dir", str(agent.directory)).stdout)
    telemetry = status["telemetry"]
    assert (telemetry["received"], telemetry["accepted"]) == (3, 2)
    assert telemetry["refused"]["unknown_model"] == 1
    assert (telemetry["sent_samples"], telemetry["acked_payloads"]) == (2, 2)
    assert not (agent.directory / "metrics.sock").exists()


def test_the_simulated_app_reports_the_measured_latency_of_the_installed_model(
    template: Template, tmp_path: Path, mosquitto: Any
) -> None:
    args = ("--simulate-app", "kws", "--simulate-app-interval", "0.1")
    for running in _start(template, tmp_path, mosquitto.port, *args):
        samples = running.watcher.wait_for(
            lambda: len(running.watcher.samples()) >= 5 and running.watcher.samples(),  # noqa: B023
            "five simulated samples",
            running.log,
        )
        for sample in samples:
            assert (sample.model, sample.version, sample.rollout_id) == ("kws", "1.0.0", "r-1")
            assert set(sample.metrics) == {"latency_ms", "confidence"}
            assert 0 < sample.metrics["latency_ms"] < 1000
            assert 0 < sample.metrics["confidence"] <= 1
        assert "simulated app loaded" in running.log()


@pytest.mark.django_db
def test_the_server_bridge_and_ingest_store_what_the_agent_sends(agent: Running) -> None:
    from django.db import transaction

    from fleet.bridge.client import InboundMessage
    from fleet.bridge.handlers import Dispatcher
    from fleet.models import Device as DeviceRow
    from ota.models import Model
    from telemetry.ingest import TelemetryIngest
    from telemetry.models import Sample

    # given batches from the real agent, split in two messages by its 64 KiB limit
    metrics = {f"metric_{i:02d}_{'x' * 50}": float(i) for i in range(30)}
    socket_path = agent.directory / "metrics.sock"
    for i in range(40):
        assert report("kws", {**metrics, "seq": i}, socket_path=socket_path)
        time.sleep(0.01)
    agent.watcher.wait_for(lambda: len(agent.watcher.samples()) == 40, "40 samples", agent.log)
    assert all(len(p) <= 65536 for p in agent.watcher.payloads)

    # when the control plane's bridge decodes them and the ingest stores them
    device = DeviceRow.objects.create(device_id=DEVICE, hardware="linux-x86_64-fp32")
    Model.objects.get_or_create(name="kws")
    ingest = TelemetryIngest.from_settings()
    dispatcher = Dispatcher(telemetry=ingest, device_cache_seconds=0)
    topic = topic_for(DEVICE, Channel.TELEMETRY)
    with transaction.atomic():
        for mid, payload in enumerate(agent.watcher.payloads, 1):
            message = InboundMessage(topic, payload, 1, False, mid, 1, datetime.now(UTC))
            outcome = dispatcher.handle(message)
            assert outcome.result == "accepted", outcome
        ingest.flush()

    # then every metric of every sample is a row, tagged as the agent sent it (a phased
    # rollout's one arm is stored under its name, main)
    rows = Sample.objects.filter(device=device)
    assert rows.count() == 40 * 31
    assert set(rows.values_list("model", "version", "rollout_id", "arm").distinct()) == {
        ("kws", "1.0.0", "r-1", "main")
    }
    assert sorted(rows.filter(metric="seq").values_list("value", flat=True)) == [
        float(i) for i in range(40)
    ]


def test_telemetry_can_go_at_qos_0(template: Template, tmp_path: Path, mosquitto: Any) -> None:
    for running in _start(template, tmp_path, mosquitto.port, telemetry_qos=0):
        assert report("kws", latency_ms=3.0, socket_path=running.directory / "metrics.sock")
        running.watcher.wait_for(running.watcher.samples, "the QoS 0 batch", running.log)
        started = time.monotonic()
        assert running.stop() == 0
        assert time.monotonic() - started < 10
        status = json.loads(agent_cli("status", "--dir", str(running.directory)).stdout)
        assert status["telemetry"]["sent_samples"] == 1
        assert status["telemetry"]["in_flight"] == 0


def test_the_agent_over_mqtt_5_takes_desired_and_sends_telemetry(
    template: Template, tmp_path: Path, mosquitto: Any
) -> None:
    for running in _start(template, tmp_path, mosquitto.port, mqtt_protocol="5"):
        target = template.release.target("http://127.0.0.1:9/unused", rollout_id="r-5", arm="A")
        running.watcher.send_desired(running.device.envelope(2, [target]))
        running.watcher.wait_for(
            lambda: json.loads((running.directory / "state.json").read_text())["last_seq"] == 2,  # noqa: B023
            "desired seq 2 accepted",
            running.log,
        )
        assert report("kws", latency_ms=3.0, socket_path=running.directory / "metrics.sock")
        (sample,) = running.watcher.wait_for(running.watcher.samples, "the batch", running.log)
        assert (sample.rollout_id, sample.arm) == ("r-5", "A")
        assert running.stop() == 0
