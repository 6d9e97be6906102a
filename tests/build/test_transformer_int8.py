"""int8 rules for transformer graphs (a tiny encoder layer built in code) and smoothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.build._support import (
    as_model,
    channel_ranges,
    encoder_block,
    encoder_feeds,
    minmax_ranges,
    run,
    session,
)
from trimtab.build import PlanRule, PrecisionPlan, Smoothing, build_int8
from trimtab.measure.metrics import sqnr_db
from trimtab.build.smooth import apply_smoothing, smoothing_factors

WEIGHTED = ("q", "k", "v", "o", "ffn1", "ffn2")
DIM = 32


@pytest.fixture(scope="module")
def encoder():
    model = as_model(encoder_block(dim=DIM, hidden=2 * DIM), "encoder")
    rng = np.random.default_rng(0)
    calib, check = encoder_feeds(rng, batch=8, dim=DIM), encoder_feeds(rng, batch=4, dim=DIM)
    return model, minmax_ranges(model.proto, calib), calib, check


def _node(proto, name):
    return next(node for node in proto.graph.node if node.name == name)


def _producer(proto, tensor):
    return next((node for node in proto.graph.node if tensor in node.output), None)


def _producer_ops(proto, node):
    return [getattr(_producer(proto, name), "op_type", None) for name in node.input]


def test_only_weight_bearing_matmuls_are_quantized(encoder):
    model, ranges, _, _ = encoder
    artifact = build_int8(model, ranges, "ort-cpu")
    assert sorted(artifact.notes["quantized"]) == sorted(WEIGHTED)
    proto = artifact.proto
    for name in ("scores", "context"):  # activation x activation stays float
        assert "activation x activation" in artifact.notes["skipped"][name]
        assert "DequantizeLinear" not in _producer_ops(proto, _node(proto, name))
    for name in ("mask_add", "softmax", "residual1", "residual2", "gelu_mul", "gelu_half", "ln1", "ln2"):
        assert "DequantizeLinear" not in _producer_ops(proto, _node(proto, name)), name


def test_mask_add_is_never_quantized_even_without_skip_tensors(encoder):
    model, ranges, _, _ = encoder
    for skip in (frozenset(), frozenset({"mask", "masked"})):
        proto = build_int8(model, ranges, "ort-cpu", skip_tensors=skip).proto
        quantized = {node.input[0] for node in proto.graph.node if node.op_type == "QuantizeLinear"}
        assert not quantized & {"mask", "masked", "scaled", "scores", "probs"}
        assert _node(proto, "mask_add").input[1] == "mask"


def test_weights_per_channel_on_the_output_axis(encoder):
    model, ranges, _, _ = encoder
    proto = build_int8(model, ranges, "ort-cpu").proto
    inits = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    for name in WEIGHTED:
        dq = _producer(proto, _node(proto, name).input[1])
        assert dq.op_type == "DequantizeLinear"
        assert [a.i for a in dq.attribute if a.name == "axis"] == [1]
        columns = inits[dq.input[0]].shape[1]
        assert inits[dq.input[0]].dtype == np.int8 and inits[dq.input[1]].shape == (columns,)


def test_matmul_outputs_stay_float_and_float_consumers_read_the_exact_tensor(encoder):
    model, ranges, _, _ = encoder
    proto = build_int8(model, ranges, "ort-cpu").proto
    quantized = {node.input[0] for node in proto.graph.node if node.op_type == "QuantizeLinear"}
    assert quantized == {"ln1", "context", "ln2", "gelu"}  # only MatMul inputs, one Q each
    assert _node(proto, "residual1").input[1] == "ln1"  # the residual keeps the float LayerNorm output
    assert _node(proto, "residual2").input[1] == "ln2"


def test_onnx_runtime_runs_integer_matmuls_and_output_is_close(encoder, tmp_path):
    model, ranges, _, check = encoder
    artifact = build_int8(model, ranges, "ort-cpu")
    path = str(tmp_path / "encoder.onnx")
    session(artifact.proto, optimized_path=path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert ops.count("MatMulIntegerToFloat") == len(WEIGHTED), ops
    assert "QLinearMatMul" not in ops and "DequantizeLinear" not in ops
    (reference,), (quantized,) = run(model.proto, check), run(artifact.proto, check)
    assert sqnr_db(quantized, reference) > 12.0  # random weights, 16 dB measured


def test_padding_does_not_change_the_unpadded_rows(encoder):
    """Static scales and float attention: a padded key changes nothing for the real tokens."""
    model, ranges, _, check = encoder
    proto = build_int8(model, ranges, "ort-cpu").proto
    (padded,) = run(proto, check)
    (alone,) = run(proto, {"x": check["x"][1:2, :-2], "mask": check["mask"][1:2, :, :-2]})
    np.testing.assert_allclose(padded[1, :-2], alone[0], atol=1e-5)


def test_smoothing_is_exact_in_float_and_follows_the_plan(encoder):
    model, ranges, calib, check = encoder
    channels = channel_ranges(model.proto, calib, ["ln1", "context", "ln2", "gelu"])
    smoothing = Smoothing(channels, alpha=0.75, min_outlier_ratio=0.0)
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    new_ranges, mapping = apply_smoothing(proto.graph, smoothing, lambda name: True)
    assert set(mapping) == {"ln1", "context", "ln2", "gelu"} and set(new_ranges) == set(mapping.values())
    np.testing.assert_allclose(run(proto, check)[0], run(model.proto, check)[0], rtol=1e-4, atol=1e-4)
    kept = build_int8(model, ranges, "ort-cpu", plan=PrecisionPlan.uniform("fp32"), smoothing=smoothing)
    assert kept.notes["smoothed"] == {}  # no int8 MatMul: nothing to smooth for
    some = build_int8(model, ranges, "ort-cpu", plan=PrecisionPlan("int8", (PlanRule("name", "ffn2", "fp32"),)),
                      smoothing=smoothing)
    assert set(some.notes["smoothed"]) == {"ln1", "context", "ln2"} and some.name.endswith("-smooth-ort-cpu")


def test_smoothing_tames_the_outlier_channel(encoder):
    model, ranges, calib, check = encoder
    channels = channel_ranges(model.proto, calib, ["ln1", "context", "ln2", "gelu"])
    plain = build_int8(model, ranges, "ort-cpu")
    smooth = build_int8(model, ranges, "ort-cpu", smoothing=Smoothing(channels))
    assert smooth.notes["quantized"] == plain.notes["quantized"]
    # The Q/K/V input's int8 step shrinks: the outlier channel (gamma 12) no longer sets it.
    assert _q_scale(plain.proto, "ln1") > 2 * _q_scale(smooth.proto, smooth.notes["smoothed"]["ln1"])
    # and the projections that read it get closer to fp32
    reference, plain_out, smooth_out = (_tensors(proto, check, ["q_mm", "k_mm", "v_mm"])
                                        for proto in (model.proto, plain.proto, smooth.proto))
    for name in ("q_mm", "k_mm", "v_mm"):
        assert sqnr_db(smooth_out[name], reference[name]) > sqnr_db(plain_out[name], reference[name]) + 3.0


def _tensors(proto, feeds, names) -> dict:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    exposed.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    sess = session(exposed, optimize=False)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _q_scale(proto, tensor) -> float:
    q = next(node for node in proto.graph.node if node.op_type == "QuantizeLinear" and node.input[0] == tensor)
    return float(next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == q.input[1]))


def test_smoothing_factors_formula_and_validation():
    a, w = np.array([8.0, 1.0, 0.0, 2.0]), np.array([0.5, 2.0, 1.0, 0.0])
    expected = [8.0**0.75 / 0.5**0.25, 1.0**0.75 / 2.0**0.25, 1.0, 1.0]  # dead channels keep 1
    np.testing.assert_allclose(smoothing_factors(a, w, 0.75), expected, rtol=1e-6)
    for alpha in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError):
            Smoothing({}, alpha=alpha)
    with pytest.raises(ValueError):
        Smoothing({}, min_outlier_ratio=-1.0)
    assert Smoothing({}).wants(np.array([1.0, 1.0, 1.0, 3.0])) and not Smoothing({}).wants(np.array([1.0, 2.9, 1.0]))
    assert not Smoothing({}).wants(np.zeros(4))  # a dead tensor has nothing to move



def test_smoothing_inserts_one_mul_per_input_with_outliers_and_keeps_the_original(encoder):
    model, ranges, calib, _ = encoder
    channels = channel_ranges(model.proto, calib, ["ln1", "context", "ln2", "gelu"])
    ratios = {name: c.amax.max() / np.median(c.amax) for name, c in channels.items()}
    assert ratios["ln1"] > 10 and ratios["context"] > 3 > max(ratios["ln2"], ratios["gelu"])
    artifact = build_int8(model, ranges, "ort-cpu", smoothing=Smoothing(channels))  # min_outlier_ratio 3
    proto = artifact.proto
    smooth_muls = [node for node in proto.graph.node if node.op_type == "Mul" and node.name.endswith("_Smooth")]
    assert sorted(node.input[0] for node in smooth_muls) == ["context", "ln1"] == sorted(artifact.notes["smoothed"])
    assert _node(proto, "gelu_half").input[1] == "half"  # GELU untouched: ONNX Runtime still fuses it
    assert artifact.tensor_map["ln1"] == "ln1"  # ln1 itself stays exact: the residual reads it
    assert _node(proto, "residual1").input[1] == "ln1"
    for name in ("q", "k", "v"):
        assert _producer(proto, _node(proto, name).input[0]).op_type == "DequantizeLinear"
