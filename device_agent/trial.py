"""The trial a swapped model must pass before it is committed (docs/architecture.md).

1. Load: through a runtime plugin when one is installed (onnxruntime for `onnx`,
   tflite_runtime / ai_edge_litert / tensorflow.lite for `tflite`), else a format
   check: ONNX is a protobuf ModelProto (checked with the `onnx` package when
   installed, else a protobuf walk that must find ir_version and graph); TFLite is a
   FlatBuffer with the file identifier `TFL3` at offset 4; any other format must be
   a non-empty file.
2. Golden-input self-test, when the TUF target's signed custom fields carry one
   under `selftest` (so it is covered by CI's release signature):

       "selftest": {
         "input":  {"name": "x", "shape": [1, 4], "dtype": "float32",
                    "data": [1, "0.5", "-2", "3.25"]},
         "output": {"name": "y", "shape": [1, 2], "data": ["0.1", 7]},
         "atol": "1e-4"
       }

   `data` is the row-major flattened tensor. Numbers may be JSON integers or
   decimal strings, because TUF's canonical JSON has no floats (`fleetctl publish
   --meta 'selftest={...}'` turns floats into strings for that reason). `dtype`
   defaults to float32; `output.name` may be omitted (first output); `atol`
   defaults to 1e-5. At most 65536 elements per tensor. The self-test needs the
   runtime; without one it is skipped and the trial says so in its detail.
3. An optional operator hook command (argv list in the config), run with
   FLEET_MODEL_PATH, FLEET_MODEL_NAME, FLEET_MODEL_VERSION and FLEET_MODEL_FORMAT
   in its environment; a non-zero exit fails the trial.

Steps 1-2 run in a child process (`python -m device_agent.trial`) so a runtime
that hangs or crashes cannot take the agent with it. Everything shares one
deadline: running past it is `commit_timeout`; any failure is `health_check_failed`.
"""

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from device_agent.protocol.errors import ErrorCode
from device_agent.testhooks import crashpoint

MAX_SELFTEST_ELEMENTS = 65536
DEFAULT_ATOL = 1e-5
DTYPES = ("float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool")


@dataclass(frozen=True, kw_only=True)
class TrialResult:
    ok: bool
    code: ErrorCode | None = None
    detail: str = ""


class CheckFailed(Exception):
    """The model did not load or did not pass its self-test."""


# --- checks (run in the child) -----------------------------------------------------


def _numbers(values: object, what: str) -> list[float]:
    if not isinstance(values, list) or len(values) > MAX_SELFTEST_ELEMENTS:
        raise CheckFailed(f"selftest {what} must be a list of at most {MAX_SELFTEST_ELEMENTS}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise CheckFailed(f"selftest {what} holds a non-number {value!r}")
        try:
            out.append(float(value))
        except ValueError:
            raise CheckFailed(f"selftest {what} holds a non-number {value!r}") from None
    return out


def _tensor(spec: object, what: str) -> tuple[str | None, list[int], str, list[float]]:
    if not isinstance(spec, dict):
        raise CheckFailed(f"selftest {what} must be an object")
    name = spec.get("name")
    shape = spec.get("shape")
    dtype = spec.get("dtype", "float32")
    if name is not None and not isinstance(name, str):
        raise CheckFailed(f"selftest {what}.name must be a string")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckFailed(f"selftest {what}.shape must be a list of non-negative integers")
    if dtype not in DTYPES:
        raise CheckFailed(f"selftest {what}.dtype must be one of {DTYPES}")
    data = _numbers(spec.get("data"), f"{what}.data")
    size = 1
    for d in shape:
        size *= d
    if size != len(data):
        raise CheckFailed(f"selftest {what}: shape {shape} needs {size} values, has {len(data)}")
    return name, shape, dtype, data


def parse_selftest(selftest: object) -> dict[str, Any]:
    """Validate the selftest object; returns it normalised. Raises CheckFailed."""
    if not isinstance(selftest, dict):
        raise CheckFailed("selftest must be an object")
    unknown = set(selftest) - {"input", "output", "atol"}
    if unknown:
        raise CheckFailed(f"selftest has unknown keys {sorted(unknown)}")
    in_name, in_shape, in_dtype, in_data = _tensor(selftest.get("input"), "input")
    out_name, out_shape, out_dtype, out_data = _tensor(selftest.get("output"), "output")
    if in_name is None:
        raise CheckFailed("selftest input.name is required")
    atol = _numbers([selftest.get("atol", DEFAULT_ATOL)], "atol")[0]
    return {
        "input": {"name": in_name, "shape": in_shape, "dtype": in_dtype, "data": in_data},
        "output": {"name": out_name, "shape": out_shape, "dtype": out_dtype, "data": out_data},
        "atol": atol,
    }


def _compare(got: Any, expected_spec: dict[str, Any], atol: float) -> None:
    np = importlib.import_module("numpy")  # only with a runtime, which brings numpy

    expected = np.asarray(expected_spec["data"], dtype="float64").reshape(expected_spec["shape"])
    actual = np.asarray(got, dtype="float64")
    if actual.shape != expected.shape:
        raise CheckFailed(f"self-test output shape {list(actual.shape)} != {list(expected.shape)}")
    if not np.allclose(actual, expected, rtol=0.0, atol=atol, equal_nan=False):
        worst = float(np.max(np.abs(actual - expected)))
        raise CheckFailed(f"self-test output differs by up to {worst:.6g} (atol {atol:g})")


def _input_array(spec: dict[str, Any]) -> Any:
    np = importlib.import_module("numpy")

    return np.asarray(spec["data"], dtype="float64").astype(spec["dtype"]).reshape(spec["shape"])


def _varint(f: BinaryIO) -> int | None:
    """A protobuf varint, None at a clean end of file."""
    value = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            if shift:
                raise CheckFailed("ONNX file ends inside a varint")
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise CheckFailed("ONNX file has an overlong varint")


def _onnx_wire_check(path: Path) -> None:
    """Without the onnx package: the file must be a well-formed protobuf message whose
    top level has ModelProto's ir_version (field 1, varint) and graph (field 7, bytes).
    Walks the fields with seeks, so memory stays flat whatever the size."""
    size = path.stat().st_size
    seen: set[int] = set()
    with path.open("rb") as f:
        while (key := _varint(f)) is not None:
            field, wire = key >> 3, key & 7
            if field == 0:
                raise CheckFailed("not an ONNX model: protobuf field number 0")
            if wire == 0:
                if _varint(f) is None:
                    raise CheckFailed("ONNX file ends inside a field")
            elif wire in (1, 5):
                f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            elif wire == 2:
                length = _varint(f)
                if length is None:
                    raise CheckFailed("ONNX file ends inside a field")
                f.seek(length, os.SEEK_CUR)
            else:
                raise CheckFailed(f"not an ONNX model: protobuf wire type {wire}")
            if f.tell() > size:
                raise CheckFailed("not an ONNX model: a field runs past the end of the file")
            seen.add(field * 8 + wire)
    if 1 * 8 + 0 not in seen or 7 * 8 + 2 not in seen:
        raise CheckFailed("not an ONNX model: no ir_version and graph")


def _optional(module: str) -> Any:
    """The module when it is installed (a runtime plugin), else None."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _check_onnx(path: Path, selftest: dict[str, Any] | None) -> str:
    onnxruntime = _optional("onnxruntime")
    if onnxruntime is not None:
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CheckFailed(f"onnxruntime cannot load the model: {exc}") from None
        if selftest is None:
            return f"loaded with onnxruntime {onnxruntime.__version__}"
        out_name = selftest["output"]["name"]
        try:
            outputs = session.run(
                [out_name] if out_name else None,
                {selftest["input"]["name"]: _input_array(selftest["input"])},
            )
        except Exception as exc:
            raise CheckFailed(f"self-test inference failed: {exc}") from None
        _compare(outputs[0], selftest["output"], selftest["atol"])
        return f"loaded with onnxruntime {onnxruntime.__version__}, self-test passed"
    onnx = _optional("onnx")
    if onnx is not None:
        try:
            onnx.checker.check_model(onnx.load(str(path)))
        except Exception as exc:
            raise CheckFailed(f"not a valid ONNX model: {exc}") from None
        detail = f"checked with onnx {onnx.__version__}"
    else:
        _onnx_wire_check(path)
        detail = "ONNX format check"
    return detail + ("; self-test skipped: no onnxruntime" if selftest else "")


def _tflite_interpreter() -> Any:
    for module in ("tflite_runtime.interpreter", "ai_edge_litert.interpreter", "tensorflow.lite"):
        imported = _optional(module)
        if imported is not None:
            return imported.Interpreter
    return None


def _check_tflite(path: Path, selftest: dict[str, Any] | None) -> str:
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise CheckFailed("not a TFLite FlatBuffer (no TFL3 identifier at offset 4)")
    interpreter_cls = _tflite_interpreter()
    if interpreter_cls is None:
        return "TFLite format check" + ("; self-test skipped: no runtime" if selftest else "")
    try:
        interpreter = interpreter_cls(model_path=str(path))
        interpreter.allocate_tensors()
    except Exception as exc:
        raise CheckFailed(f"the TFLite runtime cannot load the model: {exc}") from None
    if selftest is None:
        return "loaded with the TFLite runtime"
    try:
        inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
        outputs = interpreter.get_output_details()
        interpreter.set_tensor(inputs[selftest["input"]["name"]], _input_array(selftest["input"]))
        interpreter.invoke()
        wanted = selftest["output"]["name"]
        index = next(d["index"] for d in outputs if wanted in (None, d["name"]))
        got = interpreter.get_tensor(index)
    except Exception as exc:
        raise CheckFailed(f"self-test inference failed: {exc}") from None
    _compare(got, selftest["output"], selftest["atol"])
    return "loaded with the TFLite runtime, self-test passed"


def check_model(path: Path, *, fmt: str, selftest: object = None) -> str:
    """Load/format-check the model and run its self-test; returns what was checked."""
    spec = None if selftest is None else parse_selftest(selftest)
    if not path.is_file():
        raise CheckFailed(f"{path} is not a file")
    if fmt == "onnx":
        return _check_onnx(path, spec)
    if fmt == "tflite":
        return _check_tflite(path, spec)
    if path.stat().st_size == 0:
        raise CheckFailed("the model file is empty")
    return f"no runtime for format {fmt!r}: presence check" + (
        "; self-test skipped" if spec else ""
    )


def main() -> int:
    """Child entry point: a JSON spec on stdin, a JSON verdict on stdout's last line."""
    spec = json.loads(sys.stdin.read())
    selftest = json.loads(spec["selftest"]) if spec.get("selftest") else None
    try:
        detail = check_model(Path(spec["path"]), fmt=spec["format"], selftest=selftest)
        verdict = {"ok": True, "detail": detail}
    except CheckFailed as exc:
        verdict = {"ok": False, "detail": str(exc)}
    sys.stdout.write("\n" + json.dumps(verdict) + "\n")
    return 0


# --- the trial (run by the agent) --------------------------------------------------


def _run_bounded(
    argv: Sequence[str], *, stdin: bytes | None, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """Run argv in its own process group; on timeout kill the whole group."""
    process = subprocess.Popen(  # noqa: S603 - argv from our config, no shell
        list(argv),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    crashpoint("trial:running")
    try:
        out, err = process.communicate(stdin, timeout=max(0.0, timeout))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(list(argv), process.returncode, out, err)


def _tail(data: bytes, limit: int = 300) -> str:
    text = data.decode(errors="replace").strip()
    return text[-limit:]


def run_trial(
    path: Path,
    *,
    fmt: str,
    selftest: str | None,
    name: str,
    version: str,
    hook: Sequence[str] | None,
    deadline_s: float,
) -> TrialResult:
    """Run the whole trial against `path` (the model as applications see it)."""
    deadline = time.monotonic() + deadline_s
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    spec = json.dumps({"path": str(path), "format": fmt, "selftest": selftest}).encode()
    try:
        child = _run_bounded(
            [sys.executable, "-m", "device_agent.trial"], stdin=spec, env=env, timeout=deadline_s
        )
    except subprocess.TimeoutExpired:
        return TrialResult(
            ok=False, code=ErrorCode.COMMIT_TIMEOUT, detail=f"model check ran past {deadline_s}s"
        )
    lines = child.stdout.decode(errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except ValueError:
        verdict = None
    if child.returncode != 0 or not isinstance(verdict, dict):
        return TrialResult(
            ok=False,
            code=ErrorCode.HEALTH_CHECK_FAILED,
            detail=f"model check exited {child.returncode}: {_tail(child.stderr)}",
        )
    if not verdict.get("ok"):
        return TrialResult(
            ok=False, code=ErrorCode.HEALTH_CHECK_FAILED, detail=str(verdict.get("detail"))[:900]
        )
    detail = str(verdict.get("detail", ""))
    if hook:
        hook_env = {
            **os.environ,
            "FLEET_MODEL_PATH": str(path),
            "FLEET_MODEL_NAME": name,
            "FLEET_MODEL_VERSION": version,
            "FLEET_MODEL_FORMAT": fmt,
        }
        remaining = deadline - time.monotonic()
        try:
            done = _run_bounded(hook, stdin=None, env=hook_env, timeout=remaining)
        except subprocess.TimeoutExpired:
            return TrialResult(
                ok=False, code=ErrorCode.COMMIT_TIMEOUT, detail=f"trial hook ran past {deadline_s}s"
            )
        except OSError as exc:
            return TrialResult(
                ok=False, code=ErrorCode.HEALTH_CHECK_FAILED, detail=f"trial hook: {exc}"
            )
        if done.returncode != 0:
            return TrialResult(
                ok=False,
                code=ErrorCode.HEALTH_CHECK_FAILED,
                detail=f"trial hook exited {done.returncode}: {_tail(done.stderr or done.stdout)}",
            )
        detail += "; hook passed"
    return TrialResult(ok=True, detail=detail)


def _pythonpath() -> str:
    # The child must import this very package, wherever the agent runs from.
    package_parent = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return package_parent if not existing else f"{package_parent}{os.pathsep}{existing}"


if __name__ == "__main__":
    sys.exit(main())
