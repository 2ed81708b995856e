"""ONNX models for the rollout end-to-end tests, with their golden self-test (the signed
TUF custom field `selftest`, device_agent/trial.py): a chain of MatMuls, so a heavier
variant is really slower on the device, and a bias that makes each version's bytes
distinct."""

import json
from typing import Any, cast

from service_check import require_module

SIZE = 64


def chain_onnx(*, layers: int, bias: float, size: int = SIZE) -> tuple[bytes, dict[str, object]]:
    """y = x @ W^layers + bias with W the identity: returns (model bytes, selftest)."""
    onnx = require_module("onnx", "pip install -e '.[dev]' (deploy/dev/venv.sh)")
    from onnx import TensorProto, helper

    eye = [1.0 if i == j else 0.0 for i in range(size) for j in range(size)]
    nodes = []
    initializers = [
        helper.make_tensor("W", TensorProto.FLOAT, [size, size], eye),
        helper.make_tensor("b", TensorProto.FLOAT, [1, size], [bias] * size),
    ]
    previous = "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [previous, "W"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Add", [previous, "b"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    x = [round((i % 7) * 0.25, 2) for i in range(size)]
    selftest: dict[str, object] = {
        "input": {"name": "x", "shape": [1, size], "data": [str(v) for v in x]},
        "output": {"name": "y", "shape": [1, size], "data": [str(v + bias) for v in x]},
        "atol": "1e-3",
    }
    return bytes(model.SerializeToString()), selftest


def selftest_meta(selftest: dict[str, object], *, broken: bool = False) -> str:
    """`--meta selftest=...` for fleetctl; ``broken`` expects outputs the model never gives."""
    if broken:
        output = dict(cast(dict[str, Any], selftest["output"]))
        output["data"] = [str(float(v) + 1.0) for v in output["data"]]
        selftest = {**selftest, "output": output}
    return "selftest=" + json.dumps(selftest)
