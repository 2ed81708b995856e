"""Tiny ONNX models built with the onnx package (tests skip without it)."""

import pytest

WEIGHTS = [[1.0, 0.5], [-1.0, 2.0], [0.25, 0.0], [3.0, -0.5]]
X = [1.0, 2.0, 3.0, 4.0]


def matmul_onnx(weights: list[list[float]]) -> bytes:
    """A tiny ONNX model: y[1,2] = x[1,4] @ W[4,2]."""
    onnx = pytest.importorskip("onnx")
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
