"""A simulated application for demos and tests (`fleet-agent run --simulate-app MODEL`).

Not part of a production agent: on a real device the application that runs the model
reports its own metrics with device_agent.metrics_client.report(). This thread stands in
for it on simulated devices (the quick start, the rollout end-to-end tests): every
interval, if models/<MODEL>/current/ holds a model, it runs it for real and reports what
it measured through the same public report() function and socket an application uses.

- ONNX with onnxruntime importable: one session per installed file (reloaded when
  `current` points elsewhere), fed a random input shaped like the model's inputs
  (symbolic dimensions = 1); `latency_ms` is the wall time of session.run() and
  `confidence` the largest softmax probability over the first output, flattened.
- Anything else, or no runtime: the "inference" is reading and hashing the file;
  `latency_ms` is its wall time and `confidence` 1.0.

So a heavier model really reports a higher latency: an A/B test between a model and a
much deeper variant shows the difference in the arms' telemetry.
"""

import hashlib
import importlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.metrics_client import report

log = logging.getLogger(__name__)

# onnxruntime's element types -> numpy dtypes (a random input for each).
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class Measurement:
    latency_ms: float
    confidence: float


def _runtime() -> Any | None:
    try:
        return importlib.import_module("onnxruntime")
    except Exception:  # not installed, or broken: fall back to hashing
        return None


class _OnnxModel:
    """An onnxruntime session and the inputs to feed it."""

    def __init__(self, ort: Any, path: Path) -> None:
        np = importlib.import_module("numpy")
        options = ort.SessionOptions()
        # Many simulated devices share a small machine: one thread each.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        rng = np.random.default_rng()
        self.feed = {}
        for spec in self.session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
            dtype = _ORT_TYPES.get(spec.type, "float32")
            if dtype.startswith("float"):
                value = rng.standard_normal(shape).astype(dtype)
            else:
                value = np.zeros(shape, dtype=dtype)
            self.feed[spec.name] = value

    def run(self) -> Measurement:
        np = importlib.import_module("numpy")
        started = time.perf_counter()
        outputs = self.session.run(None, self.feed)
        latency_ms = (time.perf_counter() - started) * 1000.0
        return Measurement(latency_ms, _confidence(np, outputs[0] if outputs else None))


def _confidence(np: Any, output: Any) -> float:
    """The largest softmax probability of the flattened output (1.0 when there is none)."""
    try:
        values = np.asarray(output, dtype="float64").ravel()
    except (TypeError, ValueError):
        return 1.0
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0
    shifted = np.exp(values - values.max())
    confidence = float(shifted.max() / shifted.sum())
    return confidence if math.isfinite(confidence) else 1.0


def _hash_run(path: Path) -> Measurement:
    started = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(1024 * 1024):
            digest.update(data)
    return Measurement((time.perf_counter() - started) * 1000.0, 1.0)


class SimulatedApp:
    """Runs the installed `model` every `interval_s` and reports what it measured."""

    def __init__(
        self,
        *,
        models_dir: Path,
        model: str,
        interval_s: float,
        socket_path: Path | None,
        udp_port: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.current = models_dir / model / "current"
        self.model = model
        self.interval_s = interval_s
        self.socket_path = socket_path
        self.udp_port = udp_port
        self.stop = stop or threading.Event()
        self.reported = 0
        self.unsent = 0
        self._ort: Any | None = None
        self._ort_checked = False
        self._loaded: tuple[tuple[str, int, int], _OnnxModel] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="simulated-app", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        log.warning(
            "simulating an application: running %s every %ss and reporting its metrics",
            self.model,
            self.interval_s,
        )
        while not self.stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # a model mid-swap, a broken file: try again later
                log.debug("simulated inference of %s failed: %s", self.model, exc)

    def model_file(self) -> Path | None:
        """The model file `current` serves, or None when nothing is installed."""
        try:
            names = sorted(os.listdir(self.current))
        except OSError:
            return None
        for name in names:
            path = self.current / name
            if path.is_file():
                return path
        return None

    def measure(self, path: Path) -> Measurement:
        if not self._ort_checked:  # here, not at start-up: importing it takes a while
            self._ort, self._ort_checked = _runtime(), True
        if self._ort is None or path.suffix != ".onnx":
            return _hash_run(path)
        real = path.resolve()
        info = real.stat()
        key = (str(real), info.st_ino, info.st_mtime_ns)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # let the old session go before loading the new one
            self._loaded = (key, _OnnxModel(self._ort, real))
            log.info("simulated app loaded %s", real)
        return self._loaded[1].run()

    def tick(self) -> bool:
        """One inference and its report; False when nothing ran or it was not sent."""
        path = self.model_file()
        if path is None:
            return False
        measured = self.measure(path)
        sent = report(
            self.model,
            latency_ms=measured.latency_ms,
            confidence=measured.confidence,
            socket_path=self.socket_path,
            udp_port=self.udp_port,
        )
        if sent:
            self.reported += 1
        else:
            self.unsent += 1
        return sent
