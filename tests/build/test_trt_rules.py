"""check_tensorrt_qdq: our tensorrt build passes; each hand-made violation is caught."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.build._support import as_model, minmax_ranges, residual_cnn
from trimtab.build import build_int8, check_tensorrt_qdq
from trimtab.build._graph import copy_model


@pytest.fixture(scope="module")
def trt_proto():
    model = as_model(residual_cnn())
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    return build_int8(model, minmax_ranges(model.proto, {"x": x}), "tensorrt").proto


def _init(proto, name):
    return next(init for init in proto.graph.initializer if init.name == name)


def _set(proto, name, values):
    _init(proto, name).CopyFrom(numpy_helper.from_array(values, name))


def _node(proto, predicate):
    return next(node for node in proto.graph.node if predicate(node))


def _activation_q(proto):
    return _node(proto, lambda n: n.op_type == "QuantizeLinear")


def _conv1_weight_dq(proto):
    conv1 = _node(proto, lambda n: n.name == "conv1")
    return _node(proto, lambda n: conv1.input[1] in n.output)


def _rules(proto):
    return {finding.rule for finding in check_tensorrt_qdq(proto)}


def test_our_tensorrt_build_passes(trt_proto):
    assert check_tensorrt_qdq(trt_proto) == []


def test_ort_cpu_build_fails_the_tensorrt_rules():
    model = as_model(residual_cnn())
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    proto = build_int8(model, minmax_ranges(model.proto, {"x": x}), "ort-cpu").proto
    assert {"int8-only", "zero-point"} <= _rules(proto)


def test_uint8_zero_point_is_caught(trt_proto):
    proto = copy_model(trt_proto)
    q = _activation_q(proto)
    _set(proto, q.input[2], np.array(0, np.uint8))
    assert "int8-only" in _rules(proto)


def test_missing_zero_point_is_caught(trt_proto):
    proto = copy_model(trt_proto)
    del _activation_q(proto).input[2]
    assert "int8-only" in _rules(proto)


def test_non_zero_zero_point_is_caught(trt_proto):
    proto = copy_model(trt_proto)
    _set(proto, _activation_q(proto).input[2], np.array(3, np.int8))
    assert "zero-point" in _rules(proto)


@pytest.mark.parametrize("bad_scale", [-0.1, 0.0, np.inf, np.nan])
def test_bad_scales_are_caught(trt_proto, bad_scale):
    proto = copy_model(trt_proto)
    _set(proto, _activation_q(proto).input[1], np.array(bad_scale, np.float32))
    assert "scale" in _rules(proto)


def test_wrong_weight_axis_is_caught(trt_proto):
    proto = copy_model(trt_proto)
    dq = _conv1_weight_dq(proto)
    weight = numpy_helper.to_array(_init(proto, dq.input[0]))  # [8, 3, 3, 3]: axis 1 has 3
    _set(proto, dq.input[1], np.full(3, 0.01, np.float32))
    _set(proto, dq.input[2], np.zeros(3, np.int8))
    for attr in dq.attribute:
        if attr.name == "axis":
            attr.i = 1
    assert weight.shape[1] == 3
    assert "weight-axis" in _rules(proto)


def test_per_channel_activation_is_caught(trt_proto):
    proto = copy_model(trt_proto)
    q = _activation_q(proto)
    _set(proto, q.input[1], np.full(3, 0.05, np.float32))
    _set(proto, q.input[2], np.zeros(3, np.int8))
    assert "per-tensor-act" in _rules(proto)


def test_qdq_on_graph_output_is_caught(trt_proto):
    proto = copy_model(trt_proto)
    gemm = _node(proto, lambda n: n.op_type == "Gemm")
    gemm.output[0] = "y_float"
    proto.graph.node.extend([
        helper.make_node("QuantizeLinear", ["y_float", "ys", "yz"], ["y_q"], name="out_q"),
        helper.make_node("DequantizeLinear", ["y_q", "ys", "yz"], ["y"], name="out_dq"),
    ])
    proto.graph.initializer.extend([numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
                                    numpy_helper.from_array(np.array(0, np.int8), "yz")])
    assert "graph-output" in _rules(proto)


def test_half_quantized_residual_add_is_caught(trt_proto):
    proto = copy_model(trt_proto)
    add = _node(proto, lambda n: n.op_type == "Add")
    dq = _node(proto, lambda n: n.output[0] == add.input[1])
    q = _node(proto, lambda n: n.output[0] == dq.input[0])
    add.input[1] = q.input[0]  # bypass the Q/DQ on one side
    assert "residual-add" in _rules(proto)


def test_mismatched_q_dq_pair_is_caught(trt_proto):
    proto = copy_model(trt_proto)
    q = _activation_q(proto)
    dq = _node(proto, lambda n: n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    proto.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "other_scale"))
    dq.input[1] = "other_scale"
    assert "q-dq-pair" in _rules(proto)


def test_findings_name_the_node(trt_proto):
    proto = copy_model(trt_proto)
    q = _activation_q(proto)
    _set(proto, q.input[2], np.array(3, np.int8))
    finding = next(f for f in check_tensorrt_qdq(proto) if f.rule == "zero-point")
    assert finding.node == q.name and "0" in str(finding)
