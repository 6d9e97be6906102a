"""TensorRT's explicit-quantization (Q/DQ) rules, checked on the ONNX graph without TensorRT.

Rules (TensorRT developer guide, "Explicit Quantization"; DESIGN.md "Two INT8 flavours"):

    int8-only          every Q/DQ is int8 (zero point typed int8; no uint8, no int32 bias DQ)
    zero-point         every zero point is 0 (symmetric)
    scale              scales are constant, positive and finite
    weight-axis        a weight DQ is per-tensor or per-channel on the output axis: Conv 0,
                       ConvTranspose 1, Gemm 0 (transB=1) or 1, MatMul the last axis
    per-tensor-act     activation Q/DQ are per-tensor (one scale)
    graph-output       no graph output is produced by a Q or DQ
    residual-add       an Add with one quantized input has both inputs quantized
    q-dq-pair          every Q feeds only DQs with the same scale and zero point, and every
                       activation DQ is fed by a Q
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from trimtab.build._graph import GraphIndex

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Finding:
    """One violated rule at one node."""

    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


def check_tensorrt_qdq(proto: onnx.ModelProto) -> list[Finding]:
    """All violations of TensorRT's Q/DQ rules in `proto` (empty when it complies)."""
    index = GraphIndex(proto.graph)
    findings: list[Finding] = []
    for node in proto.graph.node:
        if node.op_type in QDQ_OPS:
            findings += _check_params(node, index)
            findings += _check_axis(node, index)
        if node.op_type == "QuantizeLinear":
            findings += _check_pair(node, index)
        if node.op_type == "DequantizeLinear" and not index.is_constant(node.input[0]):
            producer = index.producer.get(node.input[0])
            if producer is None or producer.op_type != "QuantizeLinear":
                findings.append(Finding("q-dq-pair", _label(node), "activation DQ is not fed by a QuantizeLinear"))
        if node.op_type == "Add":
            findings += _check_residual(node, index)
    for output in proto.graph.output:
        producer = index.producer.get(output.name)
        if producer is not None and producer.op_type in QDQ_OPS:
            findings.append(Finding("graph-output", _label(producer), f"graph output {output.name!r} is a {producer.op_type}"))
    return findings


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def _constant(index: GraphIndex, name: str) -> np.ndarray | None:
    return index.array(name) if name and index.is_constant(name) else None


def _check_params(node, index: GraphIndex) -> list[Finding]:
    label, found = _label(node), []
    scale = _constant(index, node.input[1])
    if scale is None:
        found.append(Finding("scale", label, "scale is not a constant initialiser"))
    elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        found.append(Finding("scale", label, f"scales must be positive and finite, got min {scale.min():.3g}"))
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if not zp_name:
        found.append(Finding("int8-only", label, "no zero point: the type defaults to uint8"))
        return found
    zero_type = index.elem_type(zp_name)
    if zero_type != TensorProto.INT8:
        found.append(Finding("int8-only", label, f"zero point type is {helper.tensor_dtype_to_string(zero_type)}, not INT8"))
    zero_point = _constant(index, zp_name)
    if zero_point is not None and np.any(zero_point != 0):
        found.append(Finding("zero-point", label, f"zero point must be 0, got {zero_point.reshape(-1)[:4].tolist()}"))
    return found


def _check_axis(node, index: GraphIndex) -> list[Finding]:
    scale = _constant(index, node.input[1])
    if scale is None:
        return []
    per_channel = scale.size > 1
    label = _label(node)
    is_weight = node.op_type == "DequantizeLinear" and index.is_constant(node.input[0])
    if not is_weight:
        return [Finding("per-tensor-act", label, f"activation has {scale.size} scales")] if per_channel else []
    if not per_channel:
        return []
    weight = index.array(node.input[0])
    axis = _attr(node, "axis", 1)
    axis = axis + weight.ndim if axis < 0 else axis
    found = []
    for consumer in index.consumers.get(node.output[0], []):
        expected = _expected_weight_axis(consumer, weight.ndim)
        if expected is not None and list(consumer.input).index(node.output[0]) == 1 and axis != expected:
            found.append(Finding("weight-axis", label,
                                 f"{consumer.op_type} weight quantized on axis {axis}, expected {expected}"))
    if scale.size != weight.shape[axis]:
        found.append(Finding("weight-axis", label, f"{scale.size} scales for {weight.shape[axis]} channels on axis {axis}"))
    return found


def _expected_weight_axis(consumer, ndim: int) -> int | None:
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    if consumer.op_type == "MatMul":
        return ndim - 1
    return None


def _attr(node, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _check_pair(node, index: GraphIndex) -> list[Finding]:
    label, found = _label(node), []
    consumers = index.consumers.get(node.output[0], [])
    if not consumers:
        found.append(Finding("q-dq-pair", label, "QuantizeLinear output is unused"))
    for consumer in consumers:
        if consumer.op_type != "DequantizeLinear":
            found.append(Finding("q-dq-pair", label, f"QuantizeLinear feeds {consumer.op_type}, not a DequantizeLinear"))
        elif not _same_params(node, consumer, index):
            found.append(Finding("q-dq-pair", label, f"scale/zero point differ from {_label(consumer)}"))
    return found


def _same_params(q_node, dq_node, index: GraphIndex) -> bool:
    for position in (1, 2):
        left = q_node.input[position] if len(q_node.input) > position else ""
        right = dq_node.input[position] if len(dq_node.input) > position else ""
        if left == right:
            continue
        a, b = _constant(index, left), _constant(index, right)
        if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
            return False
    return True


def _check_residual(node, index: GraphIndex) -> list[Finding]:
    activations = [name for name in node.input if name and not index.is_constant(name)]
    if len(activations) != 2:
        return []
    quantized = [_is_dequantized(name, index) for name in activations]
    if any(quantized) and not all(quantized):
        missing = activations[quantized.index(False)]
        return [Finding("residual-add", _label(node), f"input {missing!r} is not quantized while the other is")]
    return []


def _is_dequantized(name: str, index: GraphIndex) -> bool:
    producer = index.producer.get(name)
    return producer is not None and producer.op_type == "DequantizeLinear"
