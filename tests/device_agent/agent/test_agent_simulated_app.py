"""The simulated application (`fleet-agent run --simulate-app`): it runs the installed
model for real and reports the latency it measured through report(), so a much heavier
model reports a much higher latency_ms; it follows `current` when the agent swaps."""

import json
import os
import socket
import statistics
from pathlib import Path

from agent_models import chain_onnx
from service_check import require_module

from device_agent.simapp import SimulatedApp


def install(models: Path, slot: str, filename: str, data: bytes) -> None:
    """What the agent's swap leaves: models/kws/slots/<slot>/<file>, current -> it."""
    directory = models / "kws" / "slots" / slot
    directory.mkdir(parents=True, exist_ok=True)
    (directory / filename).write_bytes(data)
    link = models / "kws" / "current"
    tmp = link.with_name("current.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(f"slots/{slot}")
    os.replace(tmp, link)


def reports(app: SimulatedApp, inbox: socket.socket, n: int) -> list[dict[str, float]]:
    got = []
    for _ in range(n):
        assert app.tick()
        sample = json.loads(inbox.recv(8192))
        assert sample["model"] == "kws"
        got.append(sample["metrics"])
    return got


def test_a_heavier_onnx_model_reports_a_clearly_higher_latency(tmp_path: Path) -> None:
    require_module("onnxruntime", "pip install -e '.[dev]' (deploy/dev/venv.sh)")
    models = tmp_path / "models"
    path = tmp_path / "metrics.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as inbox:
        inbox.bind(str(path))
        inbox.settimeout(10)
        app = SimulatedApp(models_dir=models, model="kws", interval_s=1.0, socket_path=path)

        # nothing installed: nothing runs, nothing is reported
        assert app.tick() is False

        # given a light model (one MatMul) in slot a
        install(models, "a", "model.onnx", chain_onnx(1, size=256))
        light = reports(app, inbox, 15)

        # when the agent swaps to a heavy variant in slot b: 60 MatMuls, each 4x the light
        # one's work (~240x in all), so the per-call overhead that dominates the light
        # model's time cannot close the gap (60 MatMuls of the same size measured only
        # 5-8x the light model on a 2-vCPU machine)
        install(models, "b", "model.onnx", chain_onnx(60, size=512))
        heavy = reports(app, inbox, 15)

    # then each report carries a measured latency and a softmax confidence
    for metrics in light + heavy:
        assert set(metrics) == {"latency_ms", "confidence"}
        assert metrics["latency_ms"] > 0
        assert 0.5 / 256 < metrics["confidence"] <= 1.0
    # and the heavy model is clearly slower
    light_ms = statistics.median(m["latency_ms"] for m in light)
    heavy_ms = statistics.median(m["latency_ms"] for m in heavy)
    assert heavy_ms > 5 * light_ms, (light_ms, heavy_ms)
    assert app.reported == 30


def test_without_an_onnx_model_the_inference_is_hashing_the_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    path = tmp_path / "metrics.sock"
    install(models, "a", "model.tflite", b"\x1c\x00\x00\x00TFL3" + b"\x01" * 4_000_000)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as inbox:
        inbox.bind(str(path))
        inbox.settimeout(10)
        app = SimulatedApp(models_dir=models, model="kws", interval_s=1.0, socket_path=path)
        (metrics,) = reports(app, inbox, 1)
    assert metrics["confidence"] == 1.0
    assert metrics["latency_ms"] > 0


def test_with_no_agent_listening_the_app_goes_on(tmp_path: Path) -> None:
    models = tmp_path / "models"
    install(models, "a", "model.onnx", chain_onnx(1))
    app = SimulatedApp(
        models_dir=models, model="kws", interval_s=1.0, socket_path=tmp_path / "none.sock"
    )
    assert app.tick() is False
    assert (app.reported, app.unsent) == (0, 1)
