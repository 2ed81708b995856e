"""Tiny ONNX models built with the onnx package (tests skip without it, fail under CI)."""

from service_check import require_module

WEIGHTS = [[1.0, 0.5], [-1.0, 2.0], [0.25, 0.0], [3.0, -0.5]]
X = [1.0, 2.0, 3.0, 4.0]


def matmul_onnx(weights: list[list[float]]) -> bytes:
    """A tiny ONNX model: y[1,2] = x[1,4] @ W[4,2]."""
    onnx = require_module("onnx", "pip install -e '.[dev]' (deploy/dev/venv.sh)")
    from onnx import TensorProto, helper

    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 2], [v for row in weights for v in row])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def chain_onnx(layers: int, size: int = 64) -> bytes:
    """y = x @ W^layers (x: [batch, size]), W a fixed scrambled matrix: `layers` MatMuls, so a
    deeper chain really takes longer to run."""
    onnx = require_module("onnx", "pip install -e '.[dev]' (deploy/dev/venv.sh)")
    from onnx import TensorProto, helper

    scale = 1.0 / size
    values = [((i * 7919 + j * 104729) % 17 - 8) * scale for i in range(size) for j in range(size)]
    nodes = []
    previous = "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [previous, "W"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, [size, size], values)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
