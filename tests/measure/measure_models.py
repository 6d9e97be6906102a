"""Helpers for the measure tests: tiny MatMul models built in code and a stand-in dataset."""

from __future__ import annotations

import numpy as np

from trimtab.data.dataset import Batch


def matmul_chain(in_dim: int, hidden: int, layers: int, out_dim: int, *, seed: int = 0, two_outputs=False):
    """x[N, in_dim] -> MatMul(hidden) -> (Relu -> MatMul(hidden)) x (layers-1) -> MatMul(out_dim) -> y.
    `layers` sets the work per sample: each hidden layer is hidden^2 multiply-adds."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [in_dim] + [hidden] * layers + [out_dim]
    inits, nodes, current = [], [], "x"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        weight = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"W{i}"))
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}" if out != "y" else "y"]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        current = out
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_dim])]
    if two_outputs:
        nodes.append(helper.make_node("Sigmoid", ["y"], ["p"]))
        outputs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", out_dim]))
    graph = helper.make_graph(
        nodes,
        "matmul_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_dim])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class StandInDataset:
    """What measure needs of trimtab.data.Dataset: `batches(batch_size)` and `len`."""

    def __init__(self, x: np.ndarray, labels: np.ndarray | None = None):
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        for start in range(0, len(self.x), batch_size):
            stop = start + batch_size
            labels = None if self.labels is None else self.labels[start:stop]
            sources = [f"row {i}" for i in range(start, min(stop, len(self.x)))]
            yield Batch({"x": self.x[start:stop]}, labels, sources)
