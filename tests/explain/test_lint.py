"""Risk lint: each planted problem is flagged by its rule, and the same model without the plant is not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from trimtab.calibrate import collect_histograms, compute_ranges
from trimtab.calibrate.histogram import HistogramSet
from trimtab.data.dataset import Batch
from trimtab.explain.lint import (
    Finding,
    LintThresholds,
    Rule,
    Severity,
    _dead_fraction,
    lint,
    load_findings,
    save_findings,
)
from trimtab.load import load_model


class ArrayData:
    """The slice of trimtab.data.Dataset that calibration reads: batches of in-memory arrays."""

    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batches(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield Batch({k: v[start:stop] for k, v in self.arrays.items()}, None,
                        [f"#{i}" for i in range(start, stop)])

    def fingerprint(self) -> str:
        return "stand-in"


def _model(nodes, inputs, outputs, inits, opset: int = 17):
    graph = helper.make_graph(
        nodes, "lint_case",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _run_lint(model, data, **kwargs):
    return lint(model, collect_histograms(model, data), **kwargs)


def _hits(findings, rule, tensor=None, at_least=Severity.WARNING):
    return [f for f in findings if f.rule == rule and (tensor is None or f.tensor == tensor)
            and f.at_least(at_least)]


def _rng(seed=0):
    return np.random.default_rng(seed)


# the acceptance: four planted problems, and a clean ResNet block ----------------------
def _outlier_model():
    """x -> Mul(0.5) 'scaled' -> Conv -> Relu."""
    w = _rng(1).standard_normal((8, 4, 3, 3)) * np.sqrt(2 / 36)
    nodes = [helper.make_node("Mul", ["x", "half"], ["scaled"], name="scale"),
             helper.make_node("Conv", ["scaled", "W"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["y"], name="relu")]
    return _model(nodes, [("x", ["N", 4, 16, 16])], [("y", ["N", 8, 16, 16])], {"half": np.float32(0.5), "W": w})


@pytest.mark.parametrize("spikes", [0, 2])
def test_outlier_dominated_layer(spikes):
    x = _rng().standard_normal((64, 4, 16, 16)).astype(np.float32)
    x.reshape(-1)[[1000, 40000][:spikes]] = 400.0  # 2 of 65536 values: rarer than 0.01%
    findings = _run_lint(_outlier_model(), ArrayData(x=x))
    hits = _hits(findings, Rule.OUTLIER_RANGE, "scaled")
    if not spikes:
        assert not _hits(findings, Rule.OUTLIER_RANGE)
        return
    assert len(hits) == 1 and hits[0].node == "scale"
    evidence = hits[0].evidence
    assert evidence["amax"] == pytest.approx(200.0) and 50 < evidence["ratio"] < 200
    assert "percentile" in hits[0].action


def test_outlier_range_is_info_when_the_chosen_ranges_clip():
    x = _rng().standard_normal((64, 4, 16, 16)).astype(np.float32)
    x.reshape(-1)[[1000, 40000]] = 400.0
    model = _outlier_model()
    hists = collect_histograms(model, ArrayData(x=x))
    clipped = lint(model, hists, ranges=compute_ranges(hists, "percentile", 99.99))
    assert not _hits(clipped, Rule.OUTLIER_RANGE, "scaled")
    assert _hits(clipped, Rule.OUTLIER_RANGE, "scaled", at_least=Severity.INFO)
    assert not _hits(clipped, Rule.DEAD_QUANTIZATION, "scaled")  # the percentile scale is not dead


def _activation_model(op: str, gain: float):
    """x[N,16] -> MatMul(W * gain) 'pre' -> op -> y."""
    w = _rng(2).standard_normal((16, 16)) / 4.0 * gain
    nodes = [helper.make_node("MatMul", ["x", "W"], ["pre"], name="matmul"),
             helper.make_node(op, ["pre"], ["y"], name=op.lower())]
    return _model(nodes, [("x", ["N", 16])], [("y", ["N", 16])], {"W": w})


@pytest.mark.parametrize(("op", "gain", "flagged"),
                         [("Sigmoid", 20.0, True), ("Sigmoid", 1.0, False), ("Tanh", 10.0, True), ("Tanh", 0.5, False)])
def test_saturated_activation(op, gain, flagged):
    x = _rng(3).standard_normal((64, 16)).astype(np.float32)
    hits = _hits(_run_lint(_activation_model(op, gain), ArrayData(x=x)), Rule.SATURATION, "pre")
    assert bool(hits) is flagged
    if flagged:
        assert hits[0].node == op.lower() and hits[0].evidence["saturated_fraction"] > 0.5


def test_swish_saturation_is_only_info():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["pre"]), helper.make_node("Sigmoid", ["pre"], ["gate"]),
             helper.make_node("Mul", ["pre", "gate"], ["y"])]
    model = _model(nodes, [("x", ["N", 16])], [("y", ["N", 16])], {"W": _rng(2).standard_normal((16, 16)) * 5})
    findings = _run_lint(model, ArrayData(x=_rng(3).standard_normal((64, 16)).astype(np.float32)))
    assert not _hits(findings, Rule.SATURATION)
    assert _hits(findings, Rule.SATURATION, at_least=Severity.INFO)[0].evidence["swish"] is True


@pytest.mark.parametrize(("temperature", "flagged"), [(0.02, True), (1.0, False)])
def test_low_temperature_softmax(temperature, flagged):
    w = _rng(4).standard_normal((10, 10)) / np.sqrt(10)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"]),
             helper.make_node("Mul", ["logits", "inv_t"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=-1)]
    model = _model(nodes, [("x", ["N", 10])], [("y", ["N", 10])], {"W": w, "inv_t": np.float32(1 / temperature)})
    findings = _run_lint(model, ArrayData(x=_rng(5).standard_normal((64, 10)).astype(np.float32)))
    hits = _hits(findings, Rule.SOFTMAX_LOGITS, "z")
    assert bool(hits) is flagged
    if flagged:
        assert hits[0].node == "softmax" and hits[0].evidence["amax"] > 30


def _dead_data(large_share: float):
    """x in U(0, 1) but a share of values in U(500, 1000); the layer 'small' = x (0.1 I) is mostly
    in 0..0.1, with a maximum set by the rare large values."""
    rng = _rng(6)
    x = rng.uniform(0, 1, (64, 64)).astype(np.float32)
    large = rng.random(x.shape) < large_share
    x[large] = rng.uniform(500, 1000, int(large.sum()))
    nodes = [helper.make_node("MatMul", ["x", "tenth"], ["small"], name="dense"),
             helper.make_node("MatMul", ["small", "W"], ["y"], name="matmul")]
    model = _model(nodes, [("x", ["N", 64])], [("y", ["N", 8])],
                   {"tenth": np.eye(64) * 0.1, "W": _rng(7).standard_normal((64, 8)) / 8})
    return model, ArrayData(x=x)


def test_dead_quantization_tensor():
    model, data = _dead_data(0.01)  # 1% large values: not rare enough for the outlier rule
    hists = collect_histograms(model, data)
    findings = lint(model, hists)
    hits = _hits(findings, Rule.DEAD_QUANTIZATION, "small")
    assert len(hits) == 1 and hits[0].node == "dense"
    assert hits[0].evidence["dead_fraction"] > 0.95 and hits[0].evidence["scale_from"] == "minmax"
    assert not _hits(findings, Rule.OUTLIER_RANGE, "small")
    # a scale that follows the bulk of the values is not dead
    bulk = lint(model, hists, ranges=compute_ranges(hists, "percentile", 95.0))
    assert not _hits(bulk, Rule.DEAD_QUANTIZATION, "small")


def test_no_dead_quantization_without_the_rare_large_values():
    model, data = _dead_data(0.0)
    assert not _hits(_run_lint(model, data), Rule.DEAD_QUANTIZATION)


def test_softmax_probabilities_are_dead_only_as_info():
    nodes = [helper.make_node("Mul", ["x", "three"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    model = _model(nodes, [("x", ["N", 512])], [("y", ["N", 512])], {"three": np.float32(3.0)})
    findings = _run_lint(model, ArrayData(x=_rng(15).standard_normal((16, 512)).astype(np.float32)))
    info = _hits(findings, Rule.DEAD_QUANTIZATION, "y", at_least=Severity.INFO)
    assert len(info) == 1 and info[0].severity is Severity.INFO and info[0].evidence["softmax_output"] is True


def test_dead_fraction_discounts_exact_zeros_only_where_they_can_occur():
    hist_set = HistogramSet()
    values = np.concatenate([np.zeros(5000), _rng(8).uniform(0, 1, 5000)]).astype(np.float32)
    hist_set.update("relu", values)
    hist = hist_set["relu"]
    relu_dead, relu_nonzero = _dead_fraction(hist, hist.amax_observed, zeros_possible=True)
    any_dead, _ = _dead_fraction(hist, hist.amax_observed, zeros_possible=False)
    assert relu_dead < 0.02 and relu_nonzero == pytest.approx(5000, rel=0.01)
    assert any_dead > 0.5  # without the Relu the zeros count as tiny values


def _resnet_block(branch_gain: float = 1.0):
    """x[N,8,8,8] -> Conv-BN-Relu-Conv (He-initialised) -> Add(x) -> Relu."""
    rng = _rng(9)
    he = np.sqrt(2 / (8 * 9))
    inits = {"W1": rng.standard_normal((8, 8, 3, 3)) * he, "W2": rng.standard_normal((8, 8, 3, 3)) * he * branch_gain,
             "gamma": rng.uniform(0.5, 1.5, 8), "beta": rng.normal(0, 0.1, 8),
             "mean": rng.normal(0, 0.1, 8), "var": rng.uniform(0.5, 1.5, 8)}
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["sum"], name="residual"),
        helper.make_node("Relu", ["sum"], ["y"], name="relu2"),
    ]
    return _model(nodes, [("x", ["N", 8, 8, 8])], [("y", ["N", 8, 8, 8])], inits)


def test_clean_resnet_block_has_no_warning():
    data = ArrayData(x=_rng(10).standard_normal((32, 8, 8, 8)).astype(np.float32))
    model = _resnet_block()
    hists = collect_histograms(model, data)
    assert {"r1", "c2", "sum", "y"} <= set(hists.names)  # the rules had tensors to look at
    findings = lint(model, hists)
    assert [f for f in findings if f.at_least(Severity.WARNING)] == []


# residual and LayerNorm scales ------------------------------------------------------------
def test_residual_add_with_mismatched_scales():
    data = ArrayData(x=_rng(10).standard_normal((32, 8, 8, 8)).astype(np.float32))
    findings = _run_lint(_resnet_block(branch_gain=100.0), data)
    hits = _hits(findings, Rule.SCALE_MISMATCH)
    assert [f.node for f in hits] == ["residual"]
    assert hits[0].evidence["ratio"] > 20 and hits[0].evidence["inputs"] == ["c2", "x"]


def _layernorm_model(decomposed: bool):
    if not decomposed:
        nodes = [helper.make_node("Mul", ["x", "s"], ["h"]),
                 helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], name="ln", axis=-1)]
        return nodes, {"g": np.ones(256), "b": np.zeros(256)}
    nodes = [helper.make_node("Mul", ["x", "s"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["mu"], name="ln_mean", axes=[-1]),
             helper.make_node("Sub", ["h", "mu"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["var_eps"]),
             helper.make_node("Sqrt", ["var_eps"], ["std"]),
             helper.make_node("Div", ["d", "std"], ["y"])]
    return nodes, {"eps": np.float32(1e-5)}


@pytest.mark.parametrize("decomposed", [False, True])
@pytest.mark.parametrize("outlier", [False, True])
def test_layernorm_input_with_an_outlier_channel(decomposed, outlier):
    scale = np.ones(256)
    scale[7] = 200.0 if outlier else 1.0
    nodes, inits = _layernorm_model(decomposed)
    model = _model(nodes, [("x", ["N", 4, 256])], [("y", ["N", 4, 256])], {"s": scale, **inits}, opset=17)
    data = ArrayData(x=_rng(11).standard_normal((16, 4, 256)).astype(np.float32))
    hits = _hits(_run_lint(model, data), Rule.SCALE_MISMATCH, "h")
    assert bool(hits) is outlier
    if outlier:
        assert hits[0].node == ("ln_mean" if decomposed else "ln") and hits[0].evidence["decomposed"] is decomposed


def test_outlier_channels_of_a_matmul_input():
    def case(gain):
        scale = np.ones(64)
        scale[5] = gain
        nodes = [helper.make_node("Mul", ["x", "s"], ["h"]), helper.make_node("MatMul", ["h", "W"], ["y"], name="mm")]
        inits = {"s": scale, "W": _rng(12).standard_normal((64, 8))}
        model = _model(nodes, [("x", ["N", 4, 64])], [("y", ["N", 4, 8])], inits)
        return _run_lint(model, ArrayData(x=_rng(13).standard_normal((16, 4, 64)).astype(np.float32)))

    hits = _hits(case(100.0), Rule.OUTLIER_CHANNELS, "h")
    assert len(hits) == 1 and hits[0].node == "mm"
    assert hits[0].evidence["top_channels"] == [5] and hits[0].evidence["outlier_channels"] == 1
    assert not _hits(case(1.0), Rule.OUTLIER_CHANNELS)


# fp16 ---------------------------------------------------------------------------------------
def test_fp16_overflow_and_flush():
    rng = _rng(14)
    tiny = rng.uniform(1e-9, 5e-8, (16, 16)) * rng.choice([-1, 1], (16, 16))  # below 2^-24: 0 in fp16
    subnormal = rng.uniform(1e-7, 1e-5, (4, 4))  # fp16 subnormals: fewer digits
    nodes = [helper.make_node("Mul", ["x", "big"], ["scaled"], name="mul_big"),
             helper.make_node("MatMul", ["scaled", "tiny"], ["t"], name="mm_tiny"),
             helper.make_node("MatMul", ["t", "sane"], ["u"], name="mm_sane"),
             helper.make_node("MatMul", ["u", "subnormal"], ["y"], name="mm_subnormal")]
    inits = {"big": np.float32(7e4), "tiny": tiny, "sane": rng.standard_normal((16, 4)) * 0.3, "subnormal": subnormal}
    model = _model(nodes, [("x", ["N", 16])], [("y", ["N", 4])], inits)
    # before any data: the weight rules alone
    weights_only = lint(model)
    overflow = _hits(weights_only, Rule.FP16_OVERFLOW)
    assert [(f.tensor, f.node) for f in overflow] == [("big", "mul_big")]
    flush = _hits(weights_only, Rule.FP16_UNDERFLOW, at_least=Severity.INFO)
    assert [(f.tensor, f.node, f.severity) for f in flush] == [
        ("tiny", "mm_tiny", Severity.WARNING), ("subnormal", "mm_subnormal", Severity.INFO)]
    assert flush[0].evidence["to_zero_mass"] == 1.0 and flush[1].evidence["to_zero"] == 0
    # with data: the activation 'scaled' = 7e4 x overflows too
    findings = _run_lint(model, ArrayData(x=rng.standard_normal((32, 16)).astype(np.float32)))
    errors = {(f.rule, f.tensor) for f in findings if f.severity is Severity.ERROR}
    assert errors == {(Rule.FP16_OVERFLOW, "scaled")}
    assert findings[0].severity is Severity.ERROR  # worst first


def test_fp16_mask_sentinel_is_a_warning_and_in_range_activations_pass():
    nodes = [helper.make_node("Add", ["x", "mask"], ["y"], name="add_mask")]
    mask = np.zeros(16)
    mask[3:] = -3.4e38
    model = _model(nodes, [("x", ["N", 16])], [("y", ["N", 16])], {"mask": mask})
    hits = _hits(lint(model), Rule.FP16_OVERFLOW, at_least=Severity.INFO)
    assert [(f.severity, f.evidence["sentinel"]) for f in hits] == [(Severity.WARNING, True)]

    hist_set = HistogramSet()
    hist_set.update("x", np.linspace(-1000, 1000, 1000, dtype=np.float32))
    assert not _hits(lint(model, hist_set), Rule.FP16_OVERFLOW, "x", at_least=Severity.INFO)
    hist_set.update("x", np.array([3e4], np.float32))  # within fp16, but within 4x of its maximum
    assert [f.severity for f in _hits(lint(model, hist_set), Rule.FP16_OVERFLOW, "x")] == [Severity.WARNING]


# results ------------------------------------------------------------------------------------
def test_findings_round_trip_through_json(tmp_path):
    model, data = _dead_data(0.01)
    findings = _run_lint(model, data)
    assert findings
    path = save_findings(findings, tmp_path / "lint.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["findings"][0]["rule"] in {r.value for r in Rule}
    assert load_findings(path) == findings


def test_finding_and_thresholds_validate():
    finding = Finding("dead-quantization", "warning", "n", "t", {"ratio": np.float32(np.inf), "n": np.int64(3)})
    assert finding.rule is Rule.DEAD_QUANTIZATION and finding.evidence == {"ratio": "inf", "n": 3}
    with pytest.raises(ValueError):
        Finding("no-such-rule", "warning", None, None)
    with pytest.raises(ValueError):
        LintThresholds(outlier_ratio=0.5)
    with pytest.raises(ValueError):
        LintThresholds(dead_fraction=1.5)
    strict = LintThresholds(softmax_amax=1.0, softmax_rms=0.1)
    model = _activation_model("Softmax", 1.0)
    hists = collect_histograms(model, ArrayData(x=_rng(3).standard_normal((64, 16)).astype(np.float32)))
    assert not _hits(lint(model, hists), Rule.SOFTMAX_LOGITS)
    assert _hits(lint(model, hists, thresholds=strict), Rule.SOFTMAX_LOGITS)
