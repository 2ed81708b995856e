"""The trial: format checks, the golden self-test, the operator hook, the deadline."""

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from agent_device import tflite
from service_check import require_module

from device_agent.trial import CheckFailed, check_model, parse_selftest, run_trial


def trial(path: Path, fmt: str, **kwargs):
    defaults: dict[str, Any] = {
        "selftest": None,
        "name": "kws",
        "version": "1.0.0",
        "hook": None,
        "deadline_s": 30.0,
    }
    defaults.update(kwargs)
    return run_trial(path, fmt=fmt, **defaults)


def test_tflite_needs_its_identifier(tmp_path: Path) -> None:
    good = tmp_path / "good.tflite"
    good.write_bytes(tflite(b"x"))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0" * 100)
    assert trial(good, "tflite").ok
    result = trial(bad, "tflite")
    assert (result.ok, result.code) == (False, "health_check_failed")
    assert "TFL3" in result.detail


def test_unknown_formats_need_a_non_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "m.bin"
    empty.write_bytes(b"")
    assert not trial(empty, "bin").ok
    empty.write_bytes(b"x")
    assert trial(empty, "bin").ok


def test_onnx_garbage_fails_to_load(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08" + b"\xff" * 50)
    result = trial(path, "onnx")
    assert (result.ok, result.code) == (False, "health_check_failed")


def test_hook_sees_the_model_and_decides(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"x")
    seen = tmp_path / "seen.json"
    script = (
        "import json, os, sys; "
        f"json.dump({{k: v for k, v in os.environ.items() if k.startswith('FLEET_MODEL')}}, "
        f"open({str(seen)!r}, 'w')); sys.exit(int(sys.argv[1]))"
    )
    assert trial(path, "bin", hook=[sys.executable, "-c", script, "0"]).ok
    env = json.loads(seen.read_text())
    assert env == {
        "FLEET_MODEL_PATH": str(path),
        "FLEET_MODEL_NAME": "kws",
        "FLEET_MODEL_VERSION": "1.0.0",
        "FLEET_MODEL_FORMAT": "bin",
    }
    failed = trial(path, "bin", hook=[sys.executable, "-c", script, "3"])
    assert (failed.ok, failed.code) == (False, "health_check_failed")
    assert "exited 3" in failed.detail


def test_the_deadline_covers_the_hook(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"x")
    started = time.monotonic()
    result = trial(
        path, "bin", hook=[sys.executable, "-c", "import time; time.sleep(30)"], deadline_s=2.0
    )
    assert (result.ok, result.code) == (False, "commit_timeout")
    assert time.monotonic() - started < 10


def test_a_missing_hook_fails_the_trial(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"x")
    result = trial(path, "bin", hook=[str(tmp_path / "nope")])
    assert (result.ok, result.code) == (False, "health_check_failed")


SELFTEST = {
    "input": {"name": "x", "shape": [1, 2], "data": [1, "0.5"]},
    "output": {"shape": [1, 2], "data": ["2", 1]},
    "atol": "1e-3",
}


def test_selftest_accepts_decimal_strings() -> None:
    spec = parse_selftest(SELFTEST)
    assert spec["input"]["data"] == [1.0, 0.5]
    assert spec["input"]["dtype"] == "float32"
    assert spec["atol"] == 0.001


@pytest.mark.parametrize(
    "broken",
    [
        {**SELFTEST, "input": {"name": "x", "shape": [1, 3], "data": [1, 2]}},
        {**SELFTEST, "input": {"shape": [1, 2], "data": [1, 2]}},
        {**SELFTEST, "input": {"name": "x", "shape": [2], "data": [1, "a"]}},
        {**SELFTEST, "input": {"name": "x", "shape": [2], "data": [1, True]}},
        {**SELFTEST, "output": {"shape": [1], "data": [1], "dtype": "complex"}},
        {**SELFTEST, "extra": 1},
        [],
    ],
)
def test_malformed_selftests_fail(broken: object, tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"x")
    with pytest.raises(CheckFailed):
        check_model(path, fmt="bin", selftest=broken)


def test_selftest_through_onnxruntime(tmp_path: Path) -> None:
    require_module("onnxruntime", "pip install -e '.[dev]' (deploy/dev/venv.sh)")
    onnx = require_module("onnx", "pip install -e '.[dev]' (deploy/dev/venv.sh)")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert onnx.load(str(path))

    passed = trial(path, "onnx", selftest=json.dumps(SELFTEST))
    assert passed.ok, passed.detail
    assert "self-test passed" in passed.detail
    wrong = {**SELFTEST, "output": {"shape": [1, 2], "data": [2, 2]}}
    failed = trial(path, "onnx", selftest=json.dumps(wrong))
    assert (failed.ok, failed.code) == (False, "health_check_failed")
    assert "differs" in failed.detail


def _protobuf(*fields: tuple[int, int, bytes]) -> bytes:
    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    data = b""
    for number, wire, payload in fields:
        data += varint(number << 3 | wire)
        data += varint(int.from_bytes(payload, "little")) if wire == 0 else varint(len(payload))
        data += payload if wire == 2 else b""
    return data


def test_onnx_wire_check_without_the_onnx_package(tmp_path: Path) -> None:
    from device_agent.trial import _onnx_wire_check

    path = tmp_path / "m.onnx"
    path.write_bytes(_protobuf((1, 0, b"\x08"), (2, 2, b"fleet"), (7, 2, b"\x0a\x00")))
    _onnx_wire_check(path)
    for broken in (
        _protobuf((1, 0, b"\x08")),  # no graph
        _protobuf((1, 0, b"\x08"), (7, 2, b"xx"))[:-1],  # truncated
        b"\x08\xff" * 20,  # not protobuf
        b"\x0b\x00",  # wire type 3
    ):
        path.write_bytes(broken)
        with pytest.raises(CheckFailed):
            _onnx_wire_check(path)


def test_onnx_wire_check_accepts_a_real_model(tmp_path: Path) -> None:
    from agent_models import WEIGHTS, matmul_onnx

    from device_agent.trial import _onnx_wire_check

    path = tmp_path / "m.onnx"
    path.write_bytes(matmul_onnx(WEIGHTS))  # skips without the onnx package
    _onnx_wire_check(path)
