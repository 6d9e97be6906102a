"""The int8 candidate: QuantizeLinear/DequantizeLinear pairs placed for one target.

Same calibration, two placements (DESIGN.md, "Two INT8 flavours"):

`ort-cpu` (U8S8): ONNX Runtime fuses a node group `DQ(inputs) -> op -> Q(output)` into one
integer kernel (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...). So each quantized op gets a
Q/DQ on every activation input *and* on its output; int8 weights and int32 biases feed it through
DequantizeLinear. A Relu/Clip(0, x) right after a quantized op is folded into the op's output
range: its output gets the Q/DQ (zero point 0, so the Q clamps exactly as the Relu would), and
ORT drops the Relu/Clip before fusing. Layout ops (Reshape, Flatten, Transpose, Squeeze,
Unsqueeze) and MaxPool pass the quantized value through with the *input's* scale and zero
point, which lets ORT run them on uint8 and keeps neighbouring groups fused. Add, Mul, Concat,
Sigmoid, AveragePool and GlobalAveragePool are quantized in place (QLinearAdd, ...) when all
their inputs are activations. An op whose output is a graph output keeps that output float:
Gemm/MatMul still fuse (QGemm / MatMulIntegerToFloat give float), other ops stay float.

`tensorrt`: TensorRT's rules: int8 symmetric (zero point 0) activations, per-tensor; per-channel
weights; biases stay float (TensorRT quantizes them itself); Q/DQ on the inputs of quantizable
ops only (TensorRT propagates and fuses them), on both inputs of a residual Add, never on graph
outputs. `check_tensorrt_qdq` (trt_rules.py) verifies the result.

Before placing Q/DQ, zero-valued constant Pads feeding only Convs are merged into the Convs'
`pads` (exported "same" padding): a Q/DQ between Pad and Conv would block both fusions.

In both flavours: nodes the plan does not map to int8 stay float, as do tensors without a range,
`skip_tensors` (pass `Calibration.float_tensors`: attention masks and what adds them) and graph
outputs; an op whose inputs cannot all be quantized is left float. Rules that make transformers
work (and leave CNNs as they were):
  - a MatMul of two activations (attention's Q.K^T and softmax.V) stays float;
  - an op without weights (Add, Mul, Concat, pools, Sigmoid) is quantized only inside a quantized
    region: every activation input already quantized or written by a quantized op (through
    Relu/Clip and layout ops). A CNN's residual Add qualifies; a transformer's bias Adds, residual
    Adds, GELU pieces and mask Add (inputs from LayerNorm, Erf, float MatMuls) do not;
  - a MatMul/Gemm output gets a Q/DQ only if a quantized op reads it; otherwise ORT runs
    MatMulIntegerToFloat / QGemm with a float output, and the bias Add after it stays exact;
  - every consumer of a tensor that a quantized op writes reads its DequantizeLinear output (so
    ORT sees one consumer and can fuse); a tensor that a float op writes (a LayerNorm output
    feeding Q/K/V) is quantized for the quantized ops only, and float consumers (the residual
    Add) read the exact value. `tensor_map[t]` names the DQ output, recorded as the pass inserts it.
On all-MiniLM-L6-v2 this took mean cosine to fp32 from 0.78 to 0.992 at 1.7-2.4x fp32's speed
(docs/perf.md). `smoothing` (trimtab.build.smooth) first moves outlier channels of MatMul inputs
into the weights (SmoothQuant): 0.9975, about 5% slower. Weights are int8 symmetric
per output channel (`trimtab.calibrate.weights`); a channel whose int32 bias would overflow
(nearly dead BN-folded channels) gets a larger weight scale (`BIAS_INT32_LIMIT`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trimtab._onnx_io import is_large
from trimtab.build import qmath
from trimtab.build._graph import (
    GraphIndex,
    NameAllocator,
    copy_model,
    fold_zero_pads,
    replace_nodes,
)
from trimtab.build.artifact import Artifact
from trimtab.build.plan import PrecisionPlan
from trimtab.build.smooth import Smoothing, apply_smoothing
from trimtab.calibrate import weights
from trimtab.options import Int8Flavour, Precision

if TYPE_CHECKING:
    from trimtab.calibrate.ranges import TensorRange

logger = logging.getLogger(__name__)

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
ACTIVATIONS_TO_FOLD = frozenset({"Relu", "Clip"})
LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})


@dataclass(frozen=True)
class _FlavourSpec:
    symmetric: bool  # int8 zero-point-0 activations (else uint8 asymmetric)
    other_ops: frozenset  # ops without weights that are quantized in place
    passthrough_ops: frozenset  # ops whose output shares the input's quantisation
    quantize_outputs: bool  # Q/DQ on the op's output (ORT fusion) or inputs only (TensorRT)
    quantize_bias: bool  # int32 bias behind a DQ (QLinearConv/QGemm); TensorRT keeps bias float

    def params(self, value_range) -> qmath.QParams:
        if self.symmetric:
            return qmath.symmetric_int8(value_range.amax)
        return qmath.asymmetric_uint8(*value_range.asymmetric())


FLAVOURS = {
    Int8Flavour.ORT_CPU: _FlavourSpec(
        symmetric=False,
        other_ops=frozenset({"Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid"}),
        passthrough_ops=LAYOUT_OPS | {"MaxPool"},
        quantize_outputs=True,
        quantize_bias=True,
    ),
    Int8Flavour.TENSORRT: _FlavourSpec(
        symmetric=True,
        other_ops=frozenset({"Add", "MaxPool", "AveragePool", "GlobalAveragePool"}),
        passthrough_ops=frozenset(),
        quantize_outputs=False,
        quantize_bias=False,
    ),
}


@dataclass
class _NodeQuant:
    """What the rewrite does to one node."""

    node: onnx.NodeProto
    activations: list[str]  # input tensors that get Q/DQ
    weight: tuple[int, int | None] | None = None  # (input position, channel axis or None)
    bias: int | None = None  # input position of a bias to store as int32
    output: str | None = None  # tensor whose Q/DQ closes the group (ort-cpu)
    folded: onnx.NodeProto | None = None  # Relu/Clip absorbed into the output range


@dataclass
class _Selection:
    nodes: dict[int, _NodeQuant] = field(default_factory=dict)  # id(node) -> plan
    skipped: dict[str, str] = field(default_factory=dict)  # node label -> reason
    tensors: dict[str, str] = field(default_factory=dict)  # quantized tensor -> params owner


def build_int8(
    model,
    ranges: Mapping[str, TensorRange],
    flavour: Int8Flavour | str,
    *,
    plan: PrecisionPlan | None = None,
    method_name: str | None = None,
    skip_tensors: set[str] | frozenset[str] = frozenset(),
    smoothing: Smoothing | None = None,
    unquantized: Precision | str = Precision.FP32,
) -> Artifact:
    return build_qdq(model, ranges, flavour, Precision.INT8, plan=plan, method_name=method_name,
                     skip_tensors=skip_tensors, smoothing=smoothing, unquantized=unquantized)


def build_qdq(
    model,
    ranges: Mapping[str, TensorRange],
    flavour: Int8Flavour | str,
    element: Precision,
    *,
    plan: PrecisionPlan | None = None,
    method_name: str | None = None,
    skip_tensors: set[str] | frozenset[str] = frozenset(),
    smoothing: Smoothing | None = None,
    unquantized: Precision | str = Precision.FP32,
) -> Artifact:
    """Insert Q/DQ into a copy of `model` (a prepared Model) using `ranges` (tensor name ->
    TensorRange) placed for `flavour`. `method_name` names the calibration method that produced
    the ranges (kept in the artifact and its name). `skip_tensors` stay float (pass
    `Calibration.float_tensors`: attention masks). `smoothing` first moves activation outlier
    channels of MatMul inputs into the weights (`trimtab.build.smooth`; name suffix `-smooth`).
    `unquantized` fp16 then converts the nodes left float to fp16 by `build_fp16`'s rule, Q/DQ
    kept fp32 (name suffix `-fp16`): what a GPU wants (TensorRT's int8 + fp16 fallback)."""
    try:
        flavour = Int8Flavour(flavour)
    except ValueError:
        choices = ", ".join(member.value for member in Int8Flavour)
        raise ValueError(f"unknown int8 flavour {flavour!r}; choose one of: {choices}") from None
    spec = FLAVOURS[flavour]
    if element is Precision.FP8 and not spec.symmetric:
        raise ValueError("fp8 Q/DQ is symmetric: build it in the tensorrt flavour")
    plan = plan or PrecisionPlan.uniform(Precision.INT8)
    proto = copy_model(model.proto)
    if element is Precision.FP8:
        proto = _opset_for_fp8(proto)
    folded_pads = fold_zero_pads(proto.graph)
    skip = frozenset(skip_tensors)
    smoothed: dict[str, str] = {}
    if smoothing is not None:
        new_ranges, smoothed = apply_smoothing(
            proto.graph, smoothing, lambda name: name in ranges and name not in skip,
            lambda node: plan.precision_for(node.name, node.op_type) is Precision.INT8)
        ranges = {**ranges, **new_ranges}
    index = GraphIndex(proto.graph)
    selection = _select(index, ranges, spec, plan, skip)
    params = _tensor_params(selection, ranges, spec, element)
    rewriter = _QdqRewriter(proto.graph, index, params, element)
    tensor_map = rewriter.rewrite(selection)
    if not is_large(proto):  # larger models are checked from a file (ByteSize fails on them)
        onnx.checker.check_model(proto)
    notes = _notes(selection, flavour, rewriter)
    notes["folded_pads"] = folded_pads
    notes["smoothed"] = smoothed
    notes["smoothing_alpha"] = smoothing.alpha if smoothing is not None else None
    logger.info("int8 %s: %d nodes quantized, %d left float", flavour.value, len(notes["quantized"]),
                len(selection.skipped))
    if not selection.nodes:
        logger.warning("int8 %s: no node was quantized (do the ranges name this model's tensors?)", flavour.value)
    suffix = (f"-{method_name}" if method_name else "") + ("-smooth" if smoothing is not None else "")
    artifact = Artifact(
        name=f"{element.value}{suffix}-{flavour.value}",
        precision=element.value,
        proto=proto,
        tensor_map=tensor_map,
        flavour=flavour.value,
        calibration=method_name,
        notes=notes,
    )
    if Precision(unquantized) is Precision.FP16:
        artifact = _unquantized_in_fp16(artifact)
    elif Precision(unquantized) is not Precision.FP32:
        raise ValueError(f"unquantized nodes can stay fp32 or become fp16, not {unquantized!r}")
    return artifact


def _unquantized_in_fp16(artifact: Artifact) -> Artifact:
    from types import SimpleNamespace

    from trimtab.build.fp16 import build_fp16

    proto = artifact.proto
    if not is_large(proto):  # the fp16 pass reads tensor types: the Q/DQ outputs need them
        proto = onnx.shape_inference.infer_shapes(proto)
    half = build_fp16(SimpleNamespace(proto=proto))
    tensor_map = {name: half.tensor_map.get(mapped, mapped) for name, mapped in artifact.tensor_map.items()}
    notes = {**artifact.notes, "unquantized": "fp16", "kept_fp32": half.notes["kept_fp32"],
             "casts_inserted": half.notes["casts_inserted"]}
    return Artifact(name=f"{artifact.name}-fp16", precision=artifact.precision, proto=half.proto,
                    tensor_map=tensor_map, flavour=artifact.flavour, calibration=artifact.calibration, notes=notes)


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


# --- choosing what to quantize ---------------------------------------------------------------


def _select(index: GraphIndex, ranges, spec: _FlavourSpec, plan: PrecisionPlan, skip) -> _Selection:
    """Decide node by node, in graph order, which ops become quantized groups."""
    selection = _Selection()

    def can_carry_qdq(name: str) -> bool:
        return (bool(name) and index.is_float(name) and not index.is_constant(name)
                and name not in skip and name not in index.graph_outputs)

    def quantizable(name: str) -> bool:
        return can_carry_qdq(name) and name in ranges

    for node in index.graph.node:
        op = node.op_type
        if op not in WEIGHTED_OPS and op not in spec.other_ops and op not in spec.passthrough_ops:
            continue
        if plan.precision_for(node.name, op) is not Precision.INT8:
            selection.skipped[_label(node)] = "plan"
            continue
        if op in spec.passthrough_ops:
            _select_passthrough(node, selection, can_carry_qdq)
            continue
        if op not in WEIGHTED_OPS and not _joins_quantized_region(node, index, selection):
            selection.skipped[_label(node)] = "inputs come from float ops (int8 here would only add error)"
            continue
        quant, reason = _plan_node(node, index, spec, quantizable)
        if quant is None:
            selection.skipped[_label(node)] = reason
            continue
        selection.nodes[id(node)] = quant
        for name in quant.activations:
            selection.tensors.setdefault(name, name)
        if quant.output:
            selection.tensors.setdefault(quant.output, quant.output)
    _drop_unread_outputs(selection)
    return selection


def _joins_quantized_region(node, index: GraphIndex, selection: _Selection) -> bool:
    """An op without weights (Add, Mul, Concat, pools, Sigmoid) gains from int8 only inside a
    quantized region: each of its activation inputs must already be quantized or come from a
    quantized op (through Relu/Clip and layout ops). A residual Add of a CNN qualifies; the
    Adds, Muls and GELU pieces of a transformer, whose inputs come from float ops (bias Adds,
    LayerNorm, Erf), do not: quantizing them costs a Q/DQ and accuracy and saves nothing."""
    for name in node.input:
        if not name or index.is_constant(name):
            continue
        if not _quantized_source(name, index, selection):
            return False
    return True


def _quantized_source(name: str, index: GraphIndex, selection: _Selection) -> bool:
    while name not in selection.tensors:
        producer = index.producer.get(name)
        if producer is None:
            return False
        if id(producer) in selection.nodes:
            return True
        if producer.op_type not in ACTIVATIONS_TO_FOLD | LAYOUT_OPS:
            return False
        name = producer.input[0]
    return True


def _drop_unread_outputs(selection: _Selection) -> None:
    """A MatMul/Gemm whose output no quantized op reads keeps that output float (ONNX Runtime
    fuses DQ -> MatMul into MatMulIntegerToFloat / QGemm with float output): a Q/DQ there
    would only round the result once more before a float op (e.g. the bias Add of an exported
    transformer) reads it."""
    read = {name for quant in selection.nodes.values() for name in quant.activations}
    for quant in selection.nodes.values():
        if quant.node.op_type in ("Gemm", "MatMul") and quant.output and quant.output not in read:
            if selection.tensors.get(quant.output) == quant.output:
                del selection.tensors[quant.output]
            quant.output, quant.folded = None, None


def _select_passthrough(node, selection: _Selection, can_carry_qdq) -> None:
    """A layout op or MaxPool joins the quantized region when its input is already quantized;
    its output then reuses the input's scale and zero point (ORT drops the Q/DQ around it)."""
    source, output = node.input[0], node.output[0]
    if source not in selection.tensors:
        selection.skipped[_label(node)] = "input not quantized"
        return
    if not can_carry_qdq(output):
        selection.skipped[_label(node)] = "output cannot be quantized"
        return
    selection.nodes[id(node)] = _NodeQuant(node, activations=[source], output=output)
    selection.tensors[output] = selection.tensors[source]


def _plan_node(node, index: GraphIndex, spec: _FlavourSpec, quantizable) -> tuple[_NodeQuant | None, str]:
    if node.op_type in WEIGHTED_OPS:
        quant, reason = _plan_weighted(node, index, quantizable)
        if quant is not None and not spec.quantize_bias:
            quant.bias = None
    else:
        quant, reason = _plan_other(node, index, quantizable)
    if quant is None or not spec.quantize_outputs:
        return quant, reason
    _attach_output(quant, index, quantizable)
    if quant.output is None and node.op_type not in ("Gemm", "MatMul"):
        # Without a Q on the output ORT cannot form the integer kernel: int8 would only add error.
        return None, "output cannot be quantized, so ONNX Runtime could not fuse it"
    return quant, ""


def _plan_weighted(node, index: GraphIndex, quantizable) -> tuple[_NodeQuant | None, str]:
    op, inputs = node.op_type, list(node.input)
    if op == "MatMul" and not index.is_constant(inputs[1]):
        # Activation x activation (attention scores Q.K^T, softmax.V): both operands would be
        # quantized per tensor from calibration, the softmax input carries the mask and its
        # output spans many decades; ONNX Runtime gains little there. It stays float.
        return None, "activation x activation MatMul (e.g. attention) stays float"
    if not quantizable(inputs[0]):
        return None, f"input {inputs[0]!r} has no range or is excluded"
    if len(inputs) < 2 or not index.is_constant(inputs[1]):
        return None, "weight is not a constant"
    weight = index.array(inputs[1])
    axis = _weight_axis(node, weight)
    if axis is False:
        return None, f"unsupported weight shape {list(weight.shape)}"
    bias = 2 if len(inputs) > 2 and inputs[2] and _bias_quantizable(node, index, weight, axis) else None
    return _NodeQuant(node, activations=[inputs[0]], weight=(1, axis), bias=bias), ""


def _weight_axis(node, weight: np.ndarray):
    """The output-channel axis of a weight (None = per-tensor, False = cannot quantize)."""
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        # Axis 1 holds output channels per group; per-channel is only exact without groups.
        return 1 if attrs.get("group", 1) == 1 else None
    if weight.ndim < 2:
        return False
    if node.op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    return weight.ndim - 1  # MatMul: B is [..., K, N]


def _bias_quantizable(node, index: GraphIndex, weight: np.ndarray, axis) -> bool:
    if not index.is_constant(node.input[2]) or axis is None:
        return False
    bias = index.array(node.input[2])
    if node.op_type == "Gemm":
        attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return False
    return bias.ndim == 1 and bias.shape[0] == weight.shape[axis]


def _plan_other(node, index: GraphIndex, quantizable) -> tuple[_NodeQuant | None, str]:
    inputs = [name for name in node.input if name]
    if node.op_type in ("Add", "Mul") and any(index.is_constant(name) for name in inputs):
        return None, "one input is a constant (not a residual/gating op)"
    missing = [name for name in inputs if not quantizable(name)]
    if missing:
        return None, f"input {missing[0]!r} has no range or is excluded"
    return _NodeQuant(node, activations=inputs), ""


def _attach_output(quant: _NodeQuant, index: GraphIndex, quantizable) -> None:
    """ort-cpu: pick the tensor whose Q closes the group, folding a following Relu/Clip(0, x)."""
    output = quant.node.output[0]
    consumers = index.consumers.get(output, [])
    if len(consumers) == 1 and output not in index.graph_outputs and _foldable(consumers[0], index):
        activation = consumers[0]
        if quantizable(activation.output[0]):
            quant.output, quant.folded = activation.output[0], activation
            return
    if quantizable(output):
        quant.output = output


def _foldable(node, index: GraphIndex) -> bool:
    """Relu, or Clip with min exactly 0: a Q with zero point 0 clamps at 0 the same way."""
    if node.op_type not in ACTIVATIONS_TO_FOLD:
        return False
    if node.op_type == "Relu":
        return True
    if len(node.input) > 1 and node.input[1]:
        return index.is_constant(node.input[1]) and float(index.array(node.input[1])) == 0.0
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    return attrs.get("min") == 0.0


def _tensor_params(selection: _Selection, ranges, spec: _FlavourSpec,
                   element: Precision = Precision.INT8) -> dict[str, tuple[str, qmath.QParams]]:
    """tensor -> (owner, params). Pass-through outputs share their owner's params (and its
    scale/zero-point initialisers)."""
    def params(value_range):
        return qmath.symmetric_fp8(value_range.amax) if element is Precision.FP8 else spec.params(value_range)

    owned = {owner: params(ranges[owner]) for owner in set(selection.tensors.values())}
    return {tensor: (owner, owned[owner]) for tensor, owner in selection.tensors.items()}


def _notes(selection: _Selection, flavour: Int8Flavour, rewriter: _QdqRewriter) -> dict:
    quantized = [_label(quant.node) for quant in selection.nodes.values()]
    folded = [_label(quant.folded) for quant in selection.nodes.values() if quant.folded is not None]
    return {
        "flavour": flavour.value,
        "quantized": quantized,
        "folded_activations": folded,
        "skipped": dict(selection.skipped),
        "weights": rewriter.weight_axes,
        "quantized_tensors": len(selection.tensors),
    }


# int32 bias = bias / (s_input * s_weight_c). A nearly dead channel (BN folding leaves weights
# ~1e-11 beside an ordinary bias) would overflow int32 and lose its bias, so its weight scale is
# raised until the bias fits with headroom; that only coarsens weights that are ~0 anyway.
BIAS_INT32_LIMIT = 2.0**30


def _weight_scales(weight: np.ndarray, axis: int | None, bias: np.ndarray | None,
                   input_scale: float | None) -> np.ndarray:
    """Symmetric int8 scales per channel (a single-element array when axis is None)."""
    if axis is None:
        return np.atleast_1d(weights.symmetric_scale(np.abs(weight).max())).astype(np.float32)
    scales = weights.symmetric_scale(weights.channel_amax(weight, axis))
    if bias is not None and input_scale is not None:
        floor = np.abs(bias.astype(np.float64)) / (input_scale * BIAS_INT32_LIMIT)
        scales = np.maximum(scales, floor).astype(np.float32)
    return scales


def _fp8_weight_scales(weight: np.ndarray, axis: int | None) -> np.ndarray:
    """fp8 scales amax / 448 per channel (one value when axis is None); a zero channel gets a tiny
    positive scale."""
    amax = np.abs(weight.astype(np.float64)).max() if axis is None else weights.channel_amax(weight, axis)
    return np.atleast_1d(np.maximum(np.asarray(amax) / qmath.FP8_MAX, 1e-12)).astype(np.float32)


FP8_OPSET = 19  # QuantizeLinear/DequantizeLinear take float8 from opset 19


def _opset_for_fp8(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model at opset >= 19 (converted with ONNX's version converter when older)."""
    from onnx import version_converter

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset >= FP8_OPSET:
        return proto
    try:
        converted = version_converter.convert_version(proto, FP8_OPSET)
    except Exception as exc:  # the converter names the op it cannot move
        raise ValueError(f"fp8 Q/DQ needs opset {FP8_OPSET}; converting this opset-{opset} model failed: {exc}") from exc
    converted.ir_version = max(converted.ir_version, 9)  # float8 types need IR 9
    return converted


# --- rewriting the graph ---------------------------------------------------------------------


class _QdqRewriter:
    """Emits the new node list: Q/DQ after each quantized tensor's producer, int8 weights and
    int32 biases behind DequantizeLinear, consumers rewired to the DQ outputs."""

    def __init__(self, graph: onnx.GraphProto, index: GraphIndex, params, element: Precision = Precision.INT8) -> None:
        self.element = element
        self.graph = graph
        self.index = index
        self.params = params
        self.names = NameAllocator(graph)
        self.dq_of: dict[str, str] = {}  # quantized tensor -> its DequantizeLinear output
        self.param_inits: dict[str, tuple[str, str]] = {}  # owner -> (scale, zero point) names
        self.weight_cache: dict[tuple, tuple[str, np.ndarray]] = {}
        self.weight_axes: dict[str, int | None] = {}

    def rewrite(self, selection: _Selection) -> dict[str, str]:
        # Tensors a quantized op writes (its output Q closes the group): every consumer must
        # read the DQ, else ONNX Runtime cannot fuse the group. A tensor that a float op writes
        # and only quantized ops' inputs quantize stays float for its float consumers (a
        # transformer's residual Add keeps the exact LayerNorm output).
        self.group_outputs = {quant.output for quant in selection.nodes.values() if quant.output}
        new_nodes = []
        for name in self.index.graph_inputs:
            if name in self.params:
                new_nodes.extend(self._qdq(name))
        for node in list(self.graph.node):
            quant = selection.nodes.get(id(node))
            new_nodes.extend(self._rewire(node, quant))
            for name in node.output:
                if name in self.params:
                    new_nodes.extend(self._qdq(name))
        replace_nodes(self.graph, new_nodes)
        self._drop_unused_initialisers()
        return self._tensor_map()

    def _rewire(self, node, quant: _NodeQuant | None) -> list[onnx.NodeProto]:
        """Point inputs at DQ outputs; swap weight/bias for their quantized versions."""
        extra = []
        if quant is not None and quant.weight is not None:
            position, axis = quant.weight
            bias = self.index.array(node.input[quant.bias]) if quant.bias is not None else None
            input_scale = self.params[node.input[0]][1].scale if bias is not None else None
            weight_dq, weight_scales, node_extra = self._weight(node.input[position], axis, bias, input_scale)
            extra += node_extra
            if bias is not None:
                bias_dq, bias_nodes = self._bias(node.input[quant.bias], input_scale, weight_scales, node)
                node.input[quant.bias] = bias_dq
                extra += bias_nodes
            node.input[position] = weight_dq
        for i, name in enumerate(node.input):
            if name in self.dq_of and (quant is not None or name in self.group_outputs):
                node.input[i] = self.dq_of[name]
        return extra + [node]

    def _qdq(self, tensor: str) -> list[onnx.NodeProto]:
        owner, params = self.params[tensor]
        scale, zero_point = self._param_initialisers(owner, params)
        quantized = self.names.new(f"{tensor}_quantized")
        dequantized = self.names.new(f"{tensor}_dequantized")
        self.dq_of[tensor] = dequantized
        return [
            helper.make_node("QuantizeLinear", [tensor, scale, zero_point], [quantized],
                             name=self.names.new(f"{tensor}_QuantizeLinear")),
            helper.make_node("DequantizeLinear", [quantized, scale, zero_point], [dequantized],
                             name=self.names.new(f"{tensor}_DequantizeLinear")),
        ]

    def _param_initialisers(self, owner: str, params: qmath.QParams) -> tuple[str, str]:
        if owner not in self.param_inits:
            scale = self._add_initialiser(np.array(params.scale, dtype=np.float32), f"{owner}_scale")
            zero_point = self._add_initialiser(np.array(params.zero_point, dtype=params.dtype),
                                               f"{owner}_zero_point")
            self.param_inits[owner] = (scale, zero_point)
        return self.param_inits[owner]

    def _weight(self, name: str, axis: int | None, bias: np.ndarray | None = None,
                input_scale: float | None = None) -> tuple[str, np.ndarray, list[onnx.NodeProto]]:
        """int8 weight + DequantizeLinear, shared by nodes that quantize it identically."""
        weight = self.index.array(name)
        fp8 = self.element is Precision.FP8
        scales = _fp8_weight_scales(weight, axis) if fp8 else _weight_scales(weight, axis, bias, input_scale)
        key = (name, axis, scales.tobytes())
        if key in self.weight_cache:
            dq, scales = self.weight_cache[key]
            return dq, scales, []
        if fp8:
            shape = [1] * weight.ndim
            if axis is not None:
                shape[axis] = -1
            values = qmath.quantize_fp8(weight, scales.reshape(shape) if axis is not None else scales[0])
        else:
            values = weights.quantize_with_scale(weight, scales, axis)
        scales_init, attrs = (scales.reshape(()), {}) if axis is None else (scales, {"axis": axis})
        q_name = self._add_initialiser(values, f"{name}_quantized")
        s_name = self._add_initialiser(scales_init, f"{name}_scale")
        z_name = self._add_initialiser(np.zeros_like(scales_init, dtype=qmath.FP8 if fp8 else np.int8),
                                       f"{name}_zero_point")
        dq = self.names.new(f"{name}_dequantized")
        node = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq],
                                name=self.names.new(f"{name}_DequantizeLinear"), **attrs)
        self.weight_cache[key] = (dq, scales)
        self.weight_axes[name] = axis
        return dq, scales, [node]

    def _bias(self, name: str, input_scale: float, weight_scales: np.ndarray, node) -> tuple[str, list]:
        values, scales = qmath.quantize_bias(self.index.array(name), input_scale, weight_scales)
        label = f"{name}_{node.name}" if node.name else name
        q_name = self._add_initialiser(values, f"{label}_quantized")
        s_name = self._add_initialiser(scales, f"{label}_scale")
        z_name = self._add_initialiser(np.zeros_like(values), f"{label}_zero_point")
        dq = self.names.new(f"{label}_dequantized")
        dq_node = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq],
                                   name=self.names.new(f"{label}_DequantizeLinear"), axis=0)
        return dq, [dq_node]

    def _add_initialiser(self, values: np.ndarray, base: str) -> str:
        name = self.names.new(base)
        self.graph.initializer.append(numpy_helper.from_array(values, name))
        return name

    def _drop_unused_initialisers(self) -> None:
        used = {name for node in self.graph.node for name in node.input}
        used |= {value.name for value in self.graph.output}
        keep = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)

    def _tensor_map(self) -> dict[str, str]:
        mapping = {name: name for name, elem in self.index.elem_types.items()
                   if elem == TensorProto.FLOAT and name not in self.index.initialisers}
        mapping.update(self.dq_of)
        return mapping
