"""Regenerate the quick start's sample models (needs the `onnx` package):

    .venv/bin/python deploy/dev/sample-models/make.py

Each kws-<version>.onnx is y = x @ W + b (x: 1x16), with W the identity times a
version-specific scale, and kws-<version>.selftest.json its golden-input self-test
(device_agent/trial.py), which `manage.py fleet_up` signs into the TUF target through
`fleetctl publish --meta selftest=...`.
"""

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
SIZE = 16
VERSIONS = {"1.0.0": (1.0, 0.0), "1.1.0": (1.0, 0.5)}


def build(scale: float, bias: float) -> tuple[bytes, dict[str, object]]:
    weights = [scale if i == j else 0.0 for i in range(SIZE) for j in range(SIZE)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "kws",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SIZE])],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, [SIZE, SIZE], weights),
            helper.make_tensor("b", TensorProto.FLOAT, [1, SIZE], [bias] * SIZE),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    x = [i * 0.25 for i in range(SIZE)]
    selftest: dict[str, object] = {
        "input": {"name": "x", "shape": [1, SIZE], "data": [str(v) for v in x]},
        "output": {"name": "y", "shape": [1, SIZE], "data": [str(v * scale + bias) for v in x]},
        "atol": "1e-4",
    }
    return bytes(model.SerializeToString()), selftest


if __name__ == "__main__":
    for version, (scale, bias) in VERSIONS.items():
        data, selftest = build(scale, bias)
        (HERE / f"kws-{version}.onnx").write_bytes(data)
        (HERE / f"kws-{version}.selftest.json").write_text(json.dumps(selftest, indent=1) + "\n")
        print(f"kws-{version}.onnx: {len(data)} bytes")
