"""The fp16 and bf16 candidates: float tensors and initialisers in a 16-bit float type, graph I/O
in fp32. bf16 (8 exponent bits, 7 mantissa bits) has fp32's range and steps 8x coarser than fp16's:
the GPU's other 16-bit tensor-core type. ONNX Runtime's CPU provider has no bf16 kernels, so bf16
artifacts are for the `gpu` target.

Which nodes stay fp32 (the rule, in the order it is applied; the first that fires is recorded in
`notes["kept_fp32"]` as the reason):

1. the plan says so (`plan.precision_for(name, op_type)` is not the 16-bit type; without a plan
   every node is a candidate);
2. the node has no fp32 input or output (integer/bool/shape arithmetic): nothing to convert;
3. the op is risky in 16 bits (`RISKY_OPS`, the same for both types): reductions and cumulative
   sums (sums of many values overflow 65504 or lose the low digits), Exp/Pow/Log/Reciprocal and
   Softmax/LogSoftmax (the dynamic range of an exponential in fp16, its precision in bf16),
   normalisations (variance = mean of squares), Range,
   Resize/Upsample (their `scales`/`roi` inputs are fp32-only), ops that create tensors from
   attributes (ConstantOfShape, Random*, EyeLike) and control flow (If/Loop/Scan);
4. an fp32 initialiser input would not survive the cast: a finite value beyond the type's range
   (fp16: |v| > 65504, e.g. -3.4e38 attention masks; bf16: |v| > 3.39e38, which rounds fp32's
   most negative value, the usual mask, to -inf), or values that would flush to zero (fp16:
   |v| < 2^-24; bf16: |v| < 2^-133) in a small constant (<= 16 values, e.g. an epsilon) or
   carrying more than 0.1% of a larger tensor's total |v| (a few dead BN-folded channels with
   ~1e-10 weights do not count).

Cast, Shape and Size read any type, so they take whichever precision their input has. Every
other node reads its float inputs in its own precision; a Cast is inserted where the producer's
precision differs (one per tensor and direction, shared by all consumers). Graph inputs and
outputs keep their fp32 type and names: a 16-bit producer of a graph output writes a twin tensor
that a Cast turns back into the named fp32 output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trimtab.build._graph import GraphIndex, NameAllocator, copy_model, replace_nodes
from trimtab.build.artifact import Artifact
from trimtab.build.plan import PrecisionPlan
from trimtab.options import Precision

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest positive subnormal; smaller magnitudes flush to zero


@dataclass(frozen=True)
class HalfType:
    """A 16-bit float type an artifact can be built in."""

    name: str  # "fp16" or "bf16": the artifact's name and the suffix of converted tensors
    precision: Precision
    elem_type: int  # onnx.TensorProto
    numpy: type
    max: float  # largest finite value
    tiny: float  # smallest positive subnormal: smaller magnitudes flush to zero


FP16 = HalfType("fp16", Precision.FP16, TensorProto.FLOAT16, np.float16, FP16_MAX, FP16_TINY)
BF16 = HalfType("bf16", Precision.BF16, TensorProto.BFLOAT16, ml_dtypes.bfloat16,
                float(ml_dtypes.finfo(ml_dtypes.bfloat16).max), 2.0**-133)

RISKY_OPS: dict[str, str] = {
    **{op: "reduction: sums of many values overflow or lose precision in 16 bits" for op in (
        "ReduceSum", "ReduceSumSquare", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "CumSum")},
    **{op: "exponential/power: output range (fp16) or precision (bf16) of 16 bits" for op in (
        "Exp", "Pow", "Log", "Reciprocal", "Softmax", "LogSoftmax", "Softplus")},
    **{op: "normalisation: variance of large activations overflows or loses precision in 16 bits" for op in (
        "LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization",
        "LpNormalization", "MeanVarianceNormalization", "SimplifiedLayerNormalization")},
    "Range": "shape arithmetic: Range must stay exact",
    "Resize": "Resize scales/roi inputs are fp32-only",
    "Upsample": "Upsample scales input is fp32-only",
    **{op: "creates tensors from attributes typed fp32" for op in (
        "ConstantOfShape", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
        "EyeLike", "Constant")},
    **{op: "control flow: subgraphs are not converted" for op in ("If", "Loop", "Scan")},
    **{op: "Q/DQ: int8 scales stay fp32 (fp16 scales need opset 19)" for op in ("QuantizeLinear", "DequantizeLinear")},
}
NOTHING_TO_CONVERT = "no fp32 tensors"  # integer/shape nodes: untouched, not reported
TYPE_NEUTRAL_OPS = frozenset({"Cast", "Shape", "Size"})  # read any dtype, output type fixed


def build_fp16(model, plan: PrecisionPlan | None = None) -> Artifact:
    """Convert `model` (a prepared `trimtab.load.model.Model`) to fp16 following the module's
    rule. `plan` can keep more nodes in fp32 (anything it does not map to fp16)."""
    return build_half(model, FP16, plan)


def build_bf16(model, plan: PrecisionPlan | None = None) -> Artifact:
    """`build_fp16` in bf16: for GPUs (ONNX Runtime's CPU provider runs no bf16 kernels)."""
    return build_half(model, BF16, plan)


def build_half(model, half: HalfType, plan: PrecisionPlan | None = None) -> Artifact:
    """Convert `model` to the 16-bit float type `half` following the module's rule."""
    plan = plan or PrecisionPlan.uniform(half.precision)
    proto = copy_model(model.proto)
    index = GraphIndex(proto.graph)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    decisions = {id(node): _decide(node, index, plan, half, opset) for node in proto.graph.node}
    kept = {_label(node): reason for node in proto.graph.node
            if (reason := decisions[id(node)]) and reason != NOTHING_TO_CONVERT}
    rewriter = _HalfRewriter(proto.graph, index, half)
    new_nodes = []
    for node in proto.graph.node:
        if node.op_type in TYPE_NEUTRAL_OPS:
            new_nodes.extend(rewriter.neutral(node))
        elif decisions[id(node)] is None:
            new_nodes.extend(rewriter.to_half(node))
        else:
            new_nodes.extend(rewriter.keep_fp32(node))
    new_nodes.extend(rewriter.restore_outputs())
    replace_nodes(proto.graph, new_nodes)
    rewriter.finish()
    logger.info("%s: %d nodes kept fp32, %d casts inserted", half.name, len(kept), rewriter.casts)
    by_spec = sorted({reason for reason in kept.values() if reason.startswith("ONNX ")})
    if by_spec:  # most often bf16 convolutions below opset 22: the fix is the user's export
        logger.warning("%s: %d nodes stay fp32 because %s; export the model at a newer opset to convert them",
                       half.name, sum(r in by_spec for r in kept.values()), "; ".join(by_spec))
    return Artifact(
        name=half.name,
        precision=half.precision.value,
        proto=proto,
        tensor_map=rewriter.tensor_map(),
        notes={"kept_fp32": kept, "casts_inserted": rewriter.casts},
    )


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def _decide(node: onnx.NodeProto, index: GraphIndex, plan: PrecisionPlan, half: HalfType,
            opset: int) -> str | None:
    """None to convert the node, else the reason it stays fp32."""
    if node.op_type in TYPE_NEUTRAL_OPS:
        return None
    if plan.precision_for(node.name, node.op_type) is not half.precision:
        return "plan"
    tensors = [name for name in list(node.input) + list(node.output) if name]
    if not any(index.is_float(name) for name in tensors):
        return NOTHING_TO_CONVERT
    if node.op_type in RISKY_OPS:
        return RISKY_OPS[node.op_type]
    for name in node.input:
        if index.is_constant(name) and index.is_float(name):
            problem = _half_problem(index.array(name), half)
            if problem:
                return f"initialiser {name!r} {problem}"
    if node.domain not in ("", "ai.onnx"):
        return f"custom domain {node.domain!r}"
    return _schema_refuses(node, index, half, opset)


def _schema_refuses(node: onnx.NodeProto, index: GraphIndex, half: HalfType, opset: int) -> str | None:
    """Why the ONNX spec at the model's opset does not let this node's float inputs and outputs
    be `half` (Conv, the pools and others take bf16 only from opset 22), or None."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None  # not a standard op: ONNX Runtime's checks are the ones that apply
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    wanted = f"tensor({'bfloat16' if half.elem_type == TensorProto.BFLOAT16 else 'float16'})"
    for params, names in ((schema.inputs, node.input), (schema.outputs, node.output)):
        for position, name in enumerate(names):
            if not name or not params or not index.is_float(name):
                continue
            type_str = params[min(position, len(params) - 1)].type_str  # the last one may repeat
            if wanted not in allowed.get(type_str, {type_str}):
                return f"ONNX {node.op_type} at opset {opset} has no {half.name} form"
    return None


def _half_problem(values: np.ndarray, half: HalfType) -> str | None:
    # One absolute copy with the non-finite values zeroed (they count neither as the largest
    # value nor as tiny ones) instead of a filtered copy per step: 9 weights of 256 MiB took
    # 8.7 s that way, and each copy is a fresh allocation the kernel must fault in.
    magnitudes = np.abs(values)
    finite = np.isfinite(magnitudes)
    if not finite.all():
        magnitudes[~finite] = 0
    if magnitudes.size and magnitudes.max() > half.max:
        return f"holds {magnitudes.max():.3g}, beyond {half.name}'s {half.max:g}"
    tiny = (magnitudes < half.tiny) & (magnitudes != 0)
    count = int(np.count_nonzero(tiny))
    if not count:
        return None
    # A small constant (an epsilon) must survive; in a weight tensor, values that small only
    # matter when they carry a real share of its mass (dead BN-folded channels do not).
    if values.size <= 16 or magnitudes[tiny].sum(dtype=np.float64) > 1e-3 * magnitudes.sum(dtype=np.float64):
        return f"has {count} non-zero values that flush to zero in {half.name}"
    return None


class _HalfRewriter:
    """Tracks, for every float tensor, the name of its 16-bit and fp32 versions and makes Casts on
    demand, so each node reads its inputs in its own precision."""

    def __init__(self, graph: onnx.GraphProto, index: GraphIndex, half: HalfType) -> None:
        self.graph = graph
        self.index = index
        self.half = half
        self.names = NameAllocator(graph)
        self.as32: dict[str, str] = {name: name for name in index.graph_inputs}
        self.as32.update({name: name for name in index.initialisers})
        self.as_half: dict[str, str] = {}
        self.half_tensors: set[str] = set()  # tensors (old or new) whose type is now 16-bit
        self.pending_outputs: list[tuple[str, str]] = []  # (16-bit twin, graph output)
        self.casts = 0

    def neutral(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        source = node.input[0]
        if source not in self.as32 and source in self.as_half:
            node.input[0] = self.as_half[source]
        self._record_outputs(node, half=False)
        return [node]

    def keep_fp32(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        casts = [cast for i, name in enumerate(node.input) if (cast := self._read(node, i, name, half=False))]
        self._record_outputs(node, half=False)
        return casts + [node]

    def to_half(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        casts = [cast for i, name in enumerate(node.input) if (cast := self._read(node, i, name, half=True))]
        for i, name in enumerate(node.output):
            if name in self.index.graph_outputs and self.index.is_float(name):
                twin = self.names.new(f"{name}_{self.half.name}")
                node.output[i] = twin
                self.pending_outputs.append((twin, name))
        self._record_outputs(node, half=True)
        return casts + [node]

    def _read(self, node, position: int, name: str, *, half: bool) -> onnx.NodeProto | None:
        """Point input `position` at the version of `name` in the wanted precision; return a
        new Cast node when one is needed first."""
        if not name or not self.index.is_float(name):
            return None
        have, other = (self.as_half, self.as32) if half else (self.as32, self.as_half)
        if name in have:
            node.input[position] = have[name]
            return None
        if half and self.index.is_constant(name):
            node.input[position] = self._half_initialiser(name)
            return None
        target = self.names.new(f"{name}_{self.half.name}" if half else f"{name}_fp32")
        cast = helper.make_node(
            "Cast", [other[name]], [target], name=self.names.new(f"cast_{target}"),
            to=self.half.elem_type if half else TensorProto.FLOAT,
        )
        have[name] = target
        if half:
            self.half_tensors.add(target)
        node.input[position] = target
        self.casts += 1
        return cast

    def _half_initialiser(self, name: str) -> str:
        values = self.index.array(name).astype(self.half.numpy)  # (round to nearest even)
        new_name = self.names.new(f"{name}_{self.half.name}")
        self.graph.initializer.append(numpy_helper.from_array(values, new_name))
        self.as_half[name] = new_name
        return new_name

    def _record_outputs(self, node: onnx.NodeProto, *, half: bool) -> None:
        for new_name in node.output:
            if not new_name:
                continue
            original = next((old for twin, old in self.pending_outputs if twin == new_name), new_name)
            if half and self.index.is_float(original):
                self.as_half[original] = new_name
                self.half_tensors.add(new_name)
            else:
                self.as32[original] = new_name

    def restore_outputs(self) -> list[onnx.NodeProto]:
        """Casts that turn 16-bit twins back into the graph's named fp32 outputs."""
        casts = []
        for twin, output in self.pending_outputs:
            casts.append(helper.make_node("Cast", [twin], [output], name=self.names.new(f"cast_{output}"),
                                          to=TensorProto.FLOAT))
            self.as32[output] = output
            self.casts += 1
        return casts

    def finish(self) -> None:
        """Drop initialisers nobody reads any more and retype value_info to match."""
        used = {name for node in self.graph.node for name in node.input}
        # deleted in place: re-adding the kept ones would copy every 16-bit weight once more
        for position in reversed(range(len(self.graph.initializer))):
            if self.graph.initializer[position].name not in used:
                del self.graph.initializer[position]
        infos = {value.name: value for value in self.graph.value_info}
        for value in list(self.graph.value_info):
            if value.name in self.half_tensors:
                value.type.tensor_type.elem_type = self.half.elem_type
        for original, twin in self.as_half.items():
            if twin != original and original in infos and twin not in self.index.initialisers:
                copy = self.graph.value_info.add()
                copy.CopyFrom(infos[original])
                copy.name = twin
                copy.type.tensor_type.elem_type = self.half.elem_type
        for original, twin in self.as32.items():
            if twin != original and original in infos:
                copy = self.graph.value_info.add()
                copy.CopyFrom(infos[original])
                copy.name = twin
                copy.type.tensor_type.elem_type = TensorProto.FLOAT

    def tensor_map(self) -> dict[str, str]:
        """Each original float tensor -> the tensor carrying its value: the fp32 version where
        one exists under its own name (graph I/O, fp32 nodes), else its 16-bit tensor."""
        mapping = {}
        for name in self.index.elem_types:
            if not self.index.is_float(name) or name in self.index.initialisers:
                continue
            if self.as32.get(name) == name:
                mapping[name] = name
            elif name in self.as_half:
                mapping[name] = self.as_half[name]
            elif name in self.as32:
                mapping[name] = self.as32[name]
        return mapping
