"""Symmetric int8 weight quantization: error bound, zero channels, agreement with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from trimtab.calibrate.weights import (
    dequantize,
    quantize_symmetric,
    quantize_symmetric_per_tensor,
    quantize_with_scale,
    symmetric_scale,
)


def _per_channel(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a [C] vector so it broadcasts along `axis` of an ndim array."""
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


@pytest.mark.parametrize(("shape", "axis"), [((8, 3, 3, 3), 0), ((3, 8, 2, 2), 1), ((64, 16), -1), ((16,), 0)])
def test_per_channel_error_is_at_most_half_a_step(shape, axis):
    rng = np.random.default_rng(0)
    ndim, channels = len(shape), shape[axis]
    # channels of very different magnitude: the case per-channel scales exist for
    w = (rng.standard_normal(shape) * _per_channel(rng.uniform(0.01, 10, channels), ndim, axis)).astype(np.float32)
    q, scale = quantize_symmetric(w, axis)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scale.dtype == np.float32 and scale.shape == (channels,)
    assert q.min() >= -127  # symmetric: -128 is never used
    step = _per_channel(scale, ndim, axis)
    assert np.all(np.abs(w - dequantize(q, scale, axis)) <= step / 2 * (1 + 1e-5))
    # each channel's largest |w| lands on +-127
    assert np.all(np.moveaxis(np.abs(q), axis, 0).reshape(channels, -1).max(axis=1) == 127)


def test_zero_channel_gets_a_harmless_scale():
    w = np.ones((3, 4), np.float32)
    w[1] = 0.0
    q, scale = quantize_symmetric(w, 0)
    assert scale[1] == 1.0 and np.all(q[1] == 0)
    assert np.array_equal(dequantize(q, scale, 0), w)


def test_per_tensor():
    w = np.array([[0.5, -1.27], [0.01, 0.0]], np.float32)
    q, scale = quantize_symmetric_per_tensor(w)
    assert scale == np.float32(1.27 / 127) and q.dtype == np.int8
    assert q[0, 1] == -127 and q[0, 0] == 50 and q[1, 0] == 1
    assert np.all(np.abs(dequantize(q, scale) - w) <= scale / 2 * (1 + 1e-5))
    assert symmetric_scale(0.0) == 1.0
    with pytest.raises(ValueError):
        quantize_symmetric(np.ones((2, 2), np.int32), 0)
    with pytest.raises(ValueError):
        quantize_symmetric(w, 2)


def test_matches_onnxruntime_quantizelinear():
    """Same q as ONNX QuantizeLinear (per-axis, int8 zero point 0), including half-way ties."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 10)).astype(np.float32)
    q, scale = quantize_symmetric(w, 0)
    w[0, :3] = np.array([0.5, 1.5, -2.5], np.float32) * scale[0]  # ties round half to even
    q = quantize_with_scale(w, scale, axis=0)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["q"], axis=0)],
        "q",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 10])],
        [helper.make_tensor_value_info("q", TensorProto.INT8, [4, 10])],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(np.zeros(4, np.int8), "zp")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"w": w})
    assert np.array_equal(q, expected)
