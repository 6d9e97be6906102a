import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto

from tests.build._support import (
    as_model,
    fp16_risky_model,
    residual_cnn,
    run,
    tensor_names,
)
from trimtab.build import PrecisionPlan, build_bf16, build_fp16, build_fp32
from trimtab.build.plan import PlanRule


def _types(proto):
    types = {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.value_info) + list(proto.graph.output)}
    types.update({init.name: init.data_type for init in proto.graph.initializer})
    return types


def test_io_stays_fp32_and_weights_become_fp16():
    artifact = build_fp16(as_model(residual_cnn()))
    graph = artifact.proto.graph
    assert [v.type.tensor_type.elem_type for v in graph.input] == [TensorProto.FLOAT]
    assert [v.type.tensor_type.elem_type for v in graph.output] == [TensorProto.FLOAT]
    conv1 = next(node for node in graph.node if node.name == "conv1")
    assert _types(artifact.proto)[conv1.input[1]] == TensorProto.FLOAT16
    assert graph.node[0].op_type == "Cast" and graph.node[-1].op_type == "Cast"
    onnx.checker.check_model(artifact.proto, full_check=True)


def test_fp16_output_close_to_fp32():
    model = as_model(residual_cnn())
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (reference,) = run(model.proto, {"x": x})
    (half,) = run(build_fp16(model).proto, {"x": x})
    np.testing.assert_allclose(half, reference, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(half, reference)  # it really ran in fp16


def test_risky_ops_and_unsafe_initialisers_stay_fp32():
    model = as_model(fp16_risky_model())
    artifact = build_fp16(model)
    kept = artifact.notes["kept_fp32"]
    for name in ("softmax", "reducesum", "exp", "add_eps", "mul_big"):
        assert name in kept, name
    assert "matmul" not in kept and "matmul2" not in kept and "add_sum" not in kept
    assert "flush to zero" in kept["add_eps"] and "beyond fp16" in kept["mul_big"]
    types = _types(artifact.proto)
    assert types["sm"] == TensorProto.FLOAT and types["rs"] == TensorProto.FLOAT
    assert types["m"] == TensorProto.FLOAT16
    onnx.checker.check_model(artifact.proto, full_check=True)
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    reference, shape = run(model.proto, {"x": x})
    half, half_shape = run(artifact.proto, {"x": x})
    np.testing.assert_array_equal(shape, half_shape)
    np.testing.assert_allclose(half, reference, rtol=1e-2)


def test_plan_keeps_named_node_fp32():
    plan = PrecisionPlan("fp16", (PlanRule("name", "conv2", "fp32"),))
    artifact = build_fp16(as_model(residual_cnn()), plan)
    assert artifact.notes["kept_fp32"] == {"conv2": "plan"}
    conv2 = next(node for node in artifact.proto.graph.node if node.name == "conv2")
    assert _types(artifact.proto)[conv2.input[1]] == TensorProto.FLOAT
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    run(artifact.proto, {"x": x})


def test_tensor_maps_point_at_existing_tensors():
    model = as_model(residual_cnn())
    for artifact in (build_fp32(model), build_fp16(model)):
        names = tensor_names(artifact.proto)
        assert artifact.tensor_map, artifact.name
        assert set(artifact.tensor_map.values()) <= names
        assert {"c1", "r1", "s", "y"} <= set(artifact.tensor_map)


def test_weights_with_a_few_negligible_values_are_still_converted():
    proto = residual_cnn()
    weight = next(init for init in proto.graph.initializer if init.name == "w2")
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0] = 1e-10  # a dead output channel, as BN folding leaves behind
    weight.CopyFrom(onnx.numpy_helper.from_array(values, "w2"))
    artifact = build_fp16(as_model(proto))
    assert "conv2" not in artifact.notes["kept_fp32"]
    values[:, :, :, :] = 1e-9  # the whole tensor below fp16's range: must stay fp32
    weight.CopyFrom(onnx.numpy_helper.from_array(values, "w2"))
    assert "flush to zero" in build_fp16(as_model(proto)).notes["kept_fp32"]["conv2"]


def test_bf16_converts_what_only_fp16_range_forbids_and_keeps_the_risky_ops():
    """bf16 has fp32's range: the 1e5 constant and the 1e-10 epsilon are fine there; reductions,
    exponentials and Softmax stay fp32 as in fp16."""
    model = as_model(fp16_risky_model())
    artifact = build_bf16(model)
    assert set(artifact.notes["kept_fp32"]) == {"softmax", "reducesum", "exp"}
    types = _types(artifact.proto)
    assert types["m"] == TensorProto.BFLOAT16 and types["sm"] == TensorProto.FLOAT
    weight = next(init for init in artifact.proto.graph.initializer if init.name.startswith("W"))
    assert weight.data_type == TensorProto.BFLOAT16
    assert artifact.name == artifact.precision == "bf16"
    onnx.checker.check_model(artifact.proto, full_check=True)
    # the weights are the fp32 ones rounded to the nearest bf16 (8 significant bits)
    original = onnx.numpy_helper.to_array(next(i for i in model.proto.graph.initializer if i.name == "W"))
    rounded = onnx.numpy_helper.to_array(weight).astype(np.float32)
    assert np.abs(rounded - original).max() <= np.abs(original).max() * 2.0**-8 and not np.array_equal(rounded, original)


def test_bf16_keeps_an_fp32_mask_constant_that_would_round_to_minus_infinity():
    proto = fp16_risky_model()
    for init in proto.graph.initializer:
        if init.name == "big":
            init.CopyFrom(onnx.numpy_helper.from_array(np.array([np.finfo(np.float32).min], np.float32), "big"))
    kept = build_bf16(as_model(proto)).notes["kept_fp32"]
    assert "beyond bf16" in kept["mul_big"]


def test_ops_with_no_16_bit_form_at_the_models_opset_stay_fp32(caplog):
    """ONNX allows bf16 Conv and pools only from opset 22: below it they stay fp32, so the file
    stays valid, with a warning that says so; at opset 22 they convert."""
    proto = residual_cnn()
    with caplog.at_level("WARNING"):
        kept = build_bf16(as_model(proto)).notes["kept_fp32"]
    assert "5 nodes stay fp32 because ONNX Conv at opset 13 has no bf16 form" in caplog.text
    assert "newer opset" in caplog.text
    assert kept["conv1"] == "ONNX Conv at opset 13 has no bf16 form" and "gap" in kept
    assert not build_fp16(as_model(proto)).notes["kept_fp32"]  # fp16 Conv is allowed there
    proto.opset_import[0].version = 22
    artifact = build_bf16(as_model(proto))
    assert "conv1" not in artifact.notes["kept_fp32"]
    conv1 = next(node for node in artifact.proto.graph.node if node.name == "conv1")
    assert _types(artifact.proto)[conv1.input[1]] == TensorProto.BFLOAT16
    onnx.checker.check_model(artifact.proto, full_check=True)
