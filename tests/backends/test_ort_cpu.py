import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from trimtab.backends import get_backend
from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.build import build_int8
from trimtab.build.plan import PrecisionPlan
from trimtab.calibrate.ranges import TensorRange
from trimtab.errors import BackendUnavailableError, InvalidDataError
from trimtab.load import load_model
from trimtab.measure.metrics import sqnr_db


def _conv_dw_conv():
    """An inverted-residual block as in EfficientNet-Lite: conv -> ReLU6 -> depthwise conv (+bias;
    channel scales 1e-3..1) -> ReLU6 -> conv, then a conv head (y)."""
    rng = np.random.default_rng(0)
    channel_scale = np.logspace(-3, 0, 8, dtype=np.float32)
    w_dw = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * channel_scale[:, None, None, None]
    # the next conv undoes the channel scales, so every depthwise channel matters to the output
    w3 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32) / channel_scale[None, :, None, None]
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(w_dw, "w2"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * channel_scale, "b2"),
        numpy_helper.from_array(w3, "w3"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w4"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Clip", ["a", "lo", "hi"], ["a6"], name="relu6_1"),
        helper.make_node("Conv", ["a6", "w2", "b2"], ["b"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["b", "lo", "hi"], ["b6"], name="relu6_2"),
        helper.make_node("Conv", ["b6", "w3"], ["c"], name="conv3"),
        helper.make_node("Conv", ["c", "w4"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], inits,
    )
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def _ranges(model, x):
    names = [n.output[0] for n in model.proto.graph.node] + ["x"]
    with OrtCpuBackend(model.proto, optimize=False, extra_outputs=names) as backend:
        outputs = backend.infer({"x": x})
    return {n: TensorRange(float(np.abs(v).max()), float(v.min()), float(v.max())) for n, v in outputs.items()}


def test_a_node_kept_fp32_by_the_plan_stays_fp32_after_ort_optimisation():
    model = _conv_dw_conv()
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    plan = PrecisionPlan.uniform("int8").with_rule("name", "dw", "fp32")
    artifact = build_int8(model, _ranges(model, x), "ort-cpu", plan=plan)
    with OrtCpuBackend(artifact.proto, optimize=False) as simulated, OrtCpuBackend(artifact.proto) as optimised:
        expected = simulated.infer({"x": x})["y"]
        got = optimised.infer({"x": x})["y"]
    # ORT's WeightBiasQuantization would quantize the depthwise weights per tensor here
    # (channel scales span 1e-3..1) and the optimised run would drift far from the Q/DQ semantics.
    assert sqnr_db(got, expected) > 35


def test_wrong_input_shape_is_a_clear_error():
    model = _conv_dw_conv()
    with OrtCpuBackend(model.proto) as backend:
        with pytest.raises(InvalidDataError, match="axis 1"):
            backend.infer({"x": np.zeros((1, 1, 6, 6), np.float32)})
        with pytest.raises(InvalidDataError, match="dtype"):
            backend.infer({"x": np.zeros((1, 3, 6, 6), np.float64)})


def test_unknown_backend_names_the_available_ones():
    with pytest.raises(BackendUnavailableError, match="available: ort-cpu, gpu"):
        get_backend("tensorrt", "model.onnx")


def test_a_bf16_artifact_is_a_clear_error_that_names_the_gpu_target(tmp_path):
    from trimtab.build import build_bf16
    from trimtab.errors import InvalidModelError

    artifact = build_bf16(_conv_dw_conv())  # its Convs stay fp32 (opset < 22); the ReLU6 Clips go bf16
    with pytest.raises(InvalidModelError, match="--target gpu"):
        OrtCpuBackend(artifact.proto).infer({"x": np.zeros((1, 3, 6, 6), np.float32)})
    path = artifact.save(tmp_path / "bf16.onnx")  # the CLI's case: a file
    with pytest.raises(InvalidModelError, match="--target gpu"):
        OrtCpuBackend(path).infer({"x": np.zeros((1, 3, 6, 6), np.float32)})
