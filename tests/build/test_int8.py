import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from tests.build._support import (
    as_model,
    conv_transpose_model,
    mask_feed,
    minmax_ranges,
    mlp_with_mask,
    residual_cnn,
    run,
    session,
    swish_concat_model,
    tensor_names,
)
from trimtab.build import PrecisionPlan, build_int8, check_tensorrt_qdq
from trimtab.build.plan import PlanRule
from trimtab.measure.metrics import sqnr_db


@pytest.fixture(scope="module")
def cnn():
    model = as_model(residual_cnn())
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    return model, minmax_ranges(model.proto, {"x": calib})


def _inits(proto):
    return {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}


def _node(proto, name):
    return next(node for node in proto.graph.node if node.name == name)


def _producer(proto, tensor):
    return next((node for node in proto.graph.node if tensor in node.output), None)


@pytest.mark.parametrize("flavour", ["ort-cpu", "tensorrt"])
def test_int8_output_close_to_fp32(cnn, flavour):
    model, ranges = cnn
    x = np.random.default_rng(5).standard_normal((8, 3, 8, 8)).astype(np.float32)
    (reference,) = run(model.proto, {"x": x})
    (quantized,) = run(build_int8(model, ranges, flavour).proto, {"x": x})
    assert 25.0 < sqnr_db(quantized, reference) < 80.0  # close, yet really quantized


def test_ort_cpu_uses_uint8_activations_int8_weights_int32_bias(cnn):
    model, ranges = cnn
    artifact = build_int8(model, ranges, "ort-cpu")
    proto, inits = artifact.proto, _inits(artifact.proto)
    activation_q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_q and all(inits[n.input[2]].dtype == np.uint8 for n in activation_q)
    conv1 = _node(proto, "conv1")
    weight_dq = _producer(proto, conv1.input[1])
    assert inits[weight_dq.input[0]].dtype == np.int8
    assert [a.i for a in weight_dq.attribute if a.name == "axis"] == [0]
    assert inits[weight_dq.input[1]].shape == (8,)
    bias_dq = _producer(proto, conv1.input[2])
    assert inits[bias_dq.input[0]].dtype == np.int32
    input_scale = inits[_producer(proto, conv1.input[0]).input[1]]
    np.testing.assert_allclose(inits[bias_dq.input[1]], input_scale * inits[weight_dq.input[1]], rtol=1e-6)
    fc_weight = _producer(proto, _node(proto, "fc").input[1])
    assert [a.i for a in fc_weight.attribute if a.name == "axis"] == [0]  # transB=1: output axis 0
    relu_q = _producer(proto, _producer(proto, _node(proto, "conv2").input[0]).input[0])
    assert inits[relu_q.input[2]] == 0  # folded Relu: zero point 0 so the Q clamps at 0
    assert "relu1" in artifact.notes["folded_activations"] and "relu6" in artifact.notes["folded_activations"]
    assert artifact.flavour == "ort-cpu" and artifact.precision == "int8"


def test_ort_fuses_the_ort_cpu_artifact_into_integer_kernels(cnn, tmp_path):
    """Fails when Q/DQ placement regresses: every Conv, the Add and the Gemm must become
    integer kernels after ONNX Runtime's optimisation, with no float Conv or Relu left."""
    model, ranges = cnn
    path = str(tmp_path / "optimised.onnx")
    session(build_int8(model, ranges, "ort-cpu").proto, optimized_path=path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert ops.count("QLinearConv") == 3
    assert "QLinearAdd" in ops and "QGemm" in ops and "QLinearGlobalAveragePool" in ops
    for float_op in ("Conv", "Relu", "Clip", "Add", "Gemm", "DequantizeLinear"):
        assert float_op not in ops, ops


def test_matmul_fuses_and_sentinel_mask_is_not_quantized(tmp_path):
    model = as_model(mlp_with_mask())
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((8, 4, 16)).astype(np.float32), "mask": mask_feed(rng, 8)}
    ranges = minmax_ranges(model.proto, feeds)
    artifact = build_int8(model, ranges, "ort-cpu", skip_tensors={"mask"})
    quantized_inputs = {n.input[0] for n in artifact.proto.graph.node if n.op_type == "QuantizeLinear"}
    assert "mask" not in quantized_inputs and "x" in quantized_inputs
    assert "mask_add" in artifact.notes["skipped"]
    w1 = _producer(artifact.proto, _node(artifact.proto, "mm1").input[1])
    assert [a.i for a in w1.attribute if a.name == "axis"] == [1]  # MatMul B [K, N]: output axis 1
    path = str(tmp_path / "mlp.onnx")
    session(artifact.proto, optimized_path=path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert "MatMul" not in ops and ({"QLinearMatMul", "MatMulIntegerToFloat"} & set(ops)), ops
    (reference,) = run(model.proto, feeds)[:1]
    (quantized,) = run(artifact.proto, feeds)[:1]
    assert sqnr_db(quantized, reference) > 25.0


def test_conv_transpose_weights_use_axis_1():
    model = as_model(conv_transpose_model())
    x = np.random.default_rng(0).standard_normal((4, 4, 5, 5)).astype(np.float32)
    ranges = minmax_ranges(model.proto, {"x": x})
    for flavour in ("ort-cpu", "tensorrt"):
        artifact = build_int8(model, ranges, flavour)
        weight_dq = _producer(artifact.proto, _node(artifact.proto, "deconv").input[1])
        assert [a.i for a in weight_dq.attribute if a.name == "axis"] == [1]
        assert _inits(artifact.proto)[weight_dq.input[1]].shape == (6,)
        assert sqnr_db(run(artifact.proto, {"x": x})[0], run(model.proto, {"x": x})[0]) > 25.0


def test_tensorrt_flavour_follows_tensorrt_rules(cnn):
    model, ranges = cnn
    artifact = build_int8(model, ranges, "tensorrt")
    assert check_tensorrt_qdq(artifact.proto) == []
    proto, inits = artifact.proto, _inits(artifact.proto)
    zero_points = [inits[n.input[2]] for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    add = _node(proto, "add")
    assert all(_producer(proto, name).op_type == "DequantizeLinear" for name in add.input)
    assert _producer(proto, "y").op_type == "Gemm"
    assert not any(init.data_type == TensorProto.INT32 for init in proto.graph.initializer)  # bias stays float


def test_plan_keeps_node_float(cnn):
    model, ranges = cnn
    plan = PrecisionPlan("int8", (PlanRule("name", "conv2", "fp32"),))
    artifact = build_int8(model, ranges, "ort-cpu", plan=plan)
    conv2 = _node(artifact.proto, "conv2")
    assert conv2.input[1] == "w2" and _inits(artifact.proto)["w2"].dtype == np.float32
    assert artifact.notes["skipped"]["conv2"] == "plan"
    assert "conv1" in artifact.notes["quantized"]


def test_tensor_map_names_dequantize_outputs(cnn):
    model, ranges = cnn
    for flavour in ("ort-cpu", "tensorrt"):
        artifact = build_int8(model, ranges, flavour, method_name="minmax")
        names = tensor_names(artifact.proto)
        assert set(artifact.tensor_map.values()) <= names
        assert _producer(artifact.proto, artifact.tensor_map["r1"]).op_type == "DequantizeLinear"
        assert artifact.tensor_map["y"] == "y"
        assert artifact.name == f"int8-minmax-{flavour}" and artifact.calibration == "minmax"


def test_zero_pad_before_conv_is_folded():
    from onnx import helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv", pads=[0, 0, 1, 1])]
    graph = helper.make_graph(
        nodes, "pad_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64), "pads"),
         numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")])
    model = as_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    artifact = build_int8(model, minmax_ranges(model.proto, {"x": x}), "ort-cpu")
    assert artifact.notes["folded_pads"] == ["pad"]
    assert "Pad" not in [node.op_type for node in artifact.proto.graph.node]
    assert sqnr_db(run(artifact.proto, {"x": x})[0], run(model.proto, {"x": x})[0]) > 25.0


def test_sigmoid_mul_concat_avgpool_fuse_and_final_conv_stays_float(tmp_path):
    model = as_model(swish_concat_model())
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    artifact = build_int8(model, minmax_ranges(model.proto, {"x": x}), "ort-cpu")
    assert "could not fuse" in artifact.notes["skipped"]["conv2"]  # writes the graph output
    path = str(tmp_path / "swish.onnx")
    session(artifact.proto, optimized_path=path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    for fused in ("QLinearConv", "QLinearSigmoid", "QLinearMul", "QLinearConcat", "QLinearAveragePool"):
        assert fused in ops, ops
    assert sqnr_db(run(artifact.proto, {"x": x})[0], run(model.proto, {"x": x})[0]) > 25.0


def test_pad_feeding_a_non_conv_is_kept():
    from onnx import helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv"),
             helper.make_node("Relu", ["p"], ["z"], name="relu")]
    graph = helper.make_graph(
        nodes, "pad_two_consumers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
         numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")])
    model = as_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    artifact = build_int8(model, minmax_ranges(model.proto, {"x": x}), "ort-cpu")
    assert artifact.notes["folded_pads"] == []
    assert "Pad" in [node.op_type for node in artifact.proto.graph.node]
