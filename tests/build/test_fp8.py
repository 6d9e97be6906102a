"""fp8 (float8e4m3fn) Q/DQ artifacts: placement as the tensorrt int8 flavour, opset 19, the same
numerics as ONNX Runtime's QuantizeLinear/DequantizeLinear."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.build._support import as_model, minmax_ranges, residual_cnn
from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.build import build_fp8, build_int8, qmath
from trimtab.build.int8 import build_qdq
from trimtab.options import Int8Flavour, Precision

X = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_fp8_fake_quantize_saturates_and_rounds_to_fp8():
    params = qmath.symmetric_fp8(44.8)
    assert params.scale == pytest.approx(0.1) and params.dtype is qmath.FP8
    got = qmath.fake_quantize(np.array([0.3, -100.0, 44.8, 1.0, 0.0123], np.float32), params)
    # 0.3 / 0.1 = 3 and 10 are exact in e4m3; 0.123 -> 0.125 (3 mantissa bits); -1000 saturates at -448
    np.testing.assert_allclose(got, [0.3, -44.8, 44.8, 1.0, 0.0125], rtol=1e-6)


def test_an_fp8_cnn_is_opset_19_with_fp8_weights_and_runs_close_to_fp32_in_onnx_runtime():
    cnn = as_model(residual_cnn())
    ranges = minmax_ranges(cnn.proto, {"x": X})
    artifact = build_fp8(cnn, ranges, unquantized="fp32")
    proto = artifact.proto
    onnx.checker.check_model(proto)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 19
    q_weights = [i for i in proto.graph.initializer if i.name.endswith("_quantized")]
    assert q_weights and all(i.data_type == onnx.TensorProto.FLOAT8E4M3FN for i in q_weights)
    # (ONNX Runtime 1.32's graph optimiser fails on an fp8 QuantizeLinear after a Relu: ClipQuantFusion
    # reads its zero point as an integer; the unoptimised graph is the reference semantics anyway)
    with OrtCpuBackend(proto, optimize=False) as fp8, OrtCpuBackend(cnn.proto) as fp32:
        got, want = fp8.infer({"x": X})["y"], fp32.infer({"x": X})["y"]
    int8 = build_int8(cnn, ranges, "tensorrt")
    with OrtCpuBackend(int8.proto) as backend:
        int8_out = backend.infer({"x": X})["y"]
    assert _cosine(got, want) > 0.99 and _cosine(int8_out, want) > 0.99
    assert not np.allclose(got, int8_out)  # a different rounding grid, not int8 under another name


def test_fp8_needs_the_symmetric_placement():
    cnn = as_model(residual_cnn())
    with pytest.raises(ValueError, match="tensorrt flavour"):
        build_qdq(cnn, minmax_ranges(cnn.proto, {"x": X}), Int8Flavour.ORT_CPU, Precision.FP8)
