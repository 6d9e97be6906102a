"""A small MatMul/Relu chain with one planted outlier layer, and data for it: int8 misses a tight
budget on it, so tune's mixed-precision search has work to do."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trimtab.data import Dataset
from trimtab.data.dataset import Sample


def write_chain(path, *, layers=6, planted=3, width=32, samples=64, seed=0):
    rng = np.random.default_rng(seed)
    nodes, weights, previous = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        if i == planted:
            w[:, 0] *= 300.0  # one output channel dominates the next activation's range
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
            previous = f"r{i}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(f"h{layers - 1}", TensorProto.FLOAT, ["N", width])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by older ONNX Runtime builds too (the GPU machine's 1.30)
    onnx.save(model, path)
    data = [Sample({"x": rng.standard_normal(width).astype(np.float32)}, source=f"s{i}") for i in range(samples)]
    return Dataset(data, name="chain-data")
