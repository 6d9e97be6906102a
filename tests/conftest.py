"""Shared fixtures: tiny ONNX models built in code, and an isolated cache folder."""

from __future__ import annotations

import os

import numpy as np
import pytest

# GPU kernels autotune over one tile config in tests (values are checked, not speed; bench/ tunes)
os.environ.setdefault("TRIMTAB_QUICK_TUNE", "1")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes caches under a temporary folder, never the user's ~/.cache.
    Tests that build the real examples reuse one shared example cache (TRIMTAB_EXAMPLES_CACHE)."""
    import os

    shared = os.environ.get("TRIMTAB_TEST_CACHE")
    root = shared if shared else str(tmp_path_factory.getbasetemp() / "trimtab-cache")
    monkeypatch.setenv("TRIMTAB_CACHE", root)
    return root


def conv_bn_relu_model(opset: int = 13, seed: int = 0):
    """x[N,3,8,8] -> Conv(4) -> BatchNormalization -> Relu -> y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # readable by older ONNX Runtime builds too (the GPU machine's 1.30)
    return model


@pytest.fixture
def tiny_model():
    return conv_bn_relu_model()
