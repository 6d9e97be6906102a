"""Lowering: a typed ONNX graph and one static-shape profile -> a `Plan`.

The graph is walked once in execution order on the target device with placeholder inputs of the
profile's shapes. A node whose inputs are all constants (initialisers, folded values, or the shape
of any tensor, since shapes are fixed per profile) is evaluated now and becomes a constant: shape
arithmetic, weight DequantizeLinear, Casts of weights all disappear. Every other node becomes a
`Step`, and the placeholder run records the shape and dtype of each tensor. `fuse.fuse` then
rewrites the step list (BN folding, conv/linear epilogues, Q/DQ pairs).

Every node's kernel is made here, so a node the engine cannot run raises `UnsupportedOpError`
during the build, never during inference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from trimtab.backends.gpu import fused  # noqa: F401  (registers the trimtab.* kernels)
from trimtab.backends.gpu.errors import UnsupportedOpError
from trimtab.backends.gpu.fuse import fuse
from trimtab.backends.gpu.ops import KERNELS, ONNX_DTYPES, NodeSpec
from trimtab.backends.gpu.plan import Plan, Step

log = logging.getLogger(__name__)

_SHAPE_ONLY = {"Shape", "Size"}  # constant per profile whatever their input's values


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initialisers = {init.name for init in proto.graph.initializer}
    return [value for value in proto.graph.input if value.name not in initialisers]


def lower(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], device: torch.device | str,
          *, fusion: bool = True) -> Plan:
    """The plan of `proto` for input `shapes` (one static profile). Raises UnsupportedOpError."""
    device = torch.device(device)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    constants = {init.name: _to_torch(numpy_helper.to_array(init), device) for init in proto.graph.initializer}
    values: dict[str, torch.Tensor] = dict(constants)
    inputs = [value.name for value in graph_inputs(proto)]
    for value in graph_inputs(proto):
        elem = value.type.tensor_type.elem_type
        if elem not in ONNX_DTYPES:
            raise UnsupportedOpError("graph input", value.name, f"element type {elem} is not supported")
        values[value.name] = torch.zeros(shapes[value.name], dtype=ONNX_DTYPES[elem], device=device)
    is_const = set(constants)
    graph_outputs = [value.name for value in proto.graph.output]
    last_use = {name: i for i, node in enumerate(proto.graph.node) for name in node.input if name}
    meta: dict[str, tuple[list[int], str]] = {}
    steps: list[Step] = []
    folded = 0
    quantized: dict[str, QuantizedWeight] = {}
    with torch.inference_mode():
        for position, node in enumerate(proto.graph.node):
            outputs = _run_node(node, values, is_const, opset, device)
            if all(not name or name in is_const for name in node.input) or node.op_type in _SHAPE_ONLY:
                is_const.update(name for name in outputs)
                folded += 1
                _track_quantized(node, values, quantized)
            else:
                steps.append(Step(node.op_type, node.name or f"{node.op_type}_{len(steps)}", list(node.input),
                                  [o for o in node.output], _attrs(node)))
            for name in (*node.input, *outputs):  # placeholders die after their last reader: only
                if name and name in values:       # their shape and dtype are kept
                    meta[name] = (list(values[name].shape), str(values[name].dtype).removeprefix("torch."))
                    if name not in is_const and last_use.get(name, -1) <= position and name not in graph_outputs:
                        del values[name]
    step_tensors = {name for step in steps for name in (*step.inputs, *step.outputs) if name}
    step_tensors.update(inputs)
    step_tensors.update(graph_outputs)
    plan = Plan(
        inputs=inputs, outputs=graph_outputs, steps=steps,
        constants={name: values[name] for name in step_tensors if name in is_const and name in values},
        shapes={name: meta[name][0] for name in step_tensors if name in meta},
        dtypes={name: meta[name][1] for name in step_tensors if name in meta},
        opset=opset, notes={"onnx_nodes": len(proto.graph.node), "folded_nodes": folded},
    )
    if fusion:
        fuse(plan, quantized)
    plan.notes["steps"] = len(plan.steps)
    return plan


@dataclass(frozen=True)
class QuantizedWeight:
    """Where a folded float weight came from: DequantizeLinear(q, scale) with zero point 0, q int8
    or float8e4m3fn (then perhaps Cast to fp16). The fusions use it to give linear layers their
    8-bit weights."""

    q: torch.Tensor
    scale: torch.Tensor  # one value, or one per index of `axis`
    axis: int | None


def _track_quantized(node: onnx.NodeProto, values: dict, quantized: dict) -> None:
    if node.op_type == "DequantizeLinear":
        q, scale = values[node.input[0]], values[node.input[1]]
        zero = values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        if (q.dtype not in (torch.int8, torch.float8_e4m3fn) or (zero is not None and bool(zero.float().ne(0).any()))
                or not scale.is_floating_point()):
            return
        axis = None if scale.numel() == 1 else int(next((a.i for a in node.attribute if a.name == "axis"), 1)) % q.dim()
        quantized[node.output[0]] = QuantizedWeight(q, scale.float().reshape(-1), axis)
    elif node.op_type in ("Cast", "Identity") and node.input[0] in quantized:
        quantized[node.output[0]] = quantized[node.input[0]]


def _run_node(node: onnx.NodeProto, values: dict, is_const: set, opset: int, device) -> list[str]:
    """Make the node's kernel and run it on `values` (placeholders or constants); store its outputs."""
    name = node.name or node.op_type
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedOpError(node.op_type, name, f"ops of domain '{node.domain}' are not supported")
    if node.op_type == "Constant":
        values[node.output[0]] = _constant_value(node, device)
        return [node.output[0]]
    make = KERNELS.get(node.op_type)
    if make is None or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        raise UnsupportedOpError(node.op_type, name, "is not supported by the gpu engine")
    args = [values[i] if i else None for i in node.input]
    spec = node_spec(node.op_type, name, _attrs(node), list(node.input), args, is_const, opset, device)
    kernel = make(spec)
    try:
        result = kernel(*args)
    except UnsupportedOpError:
        raise
    except Exception as exc:  # a kernel that fails on the profile's shapes is a build error
        raise UnsupportedOpError(node.op_type, name, f"failed on the profile's shapes: {exc}") from exc
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    wanted = [o for o in node.output if o]
    if len(results) < len(node.output) and any(node.output[len(results):]):
        raise UnsupportedOpError(node.op_type, name, f"only its first {len(results)} output(s) are supported")
    for out_name, value in zip(node.output, results):
        if out_name:
            values[out_name] = value
    return wanted


def node_spec(op: str, name: str, attrs: dict, input_names: list[str], args: list, is_const: set,
              opset: int, device) -> NodeSpec:
    return NodeSpec(
        op=op, name=name, attrs=attrs,
        consts=[a if (n and n in is_const) else None for n, a in zip(input_names, args)],
        shapes=[tuple(a.shape) if a is not None else None for a in args],
        opset=opset, present=[bool(n) for n in input_names], device=torch.device(device).type,
    )


def _attrs(node: onnx.NodeProto) -> dict:
    attrs = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, onnx.TensorProto):
            value = _to_torch(numpy_helper.to_array(value), "cpu")
        elif isinstance(value, list):
            value = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
        attrs[attribute.name] = value
    outputs = sum(1 for o in node.output if o)
    if outputs > 1:
        attrs["_outputs"] = outputs
    return attrs


def _constant_value(node: onnx.NodeProto, device) -> torch.Tensor:
    attribute = node.attribute[0]
    value = helper.get_attribute_value(attribute)
    if attribute.name == "value":
        return _to_torch(numpy_helper.to_array(value), device)
    if attribute.name in ("value_float", "value_floats"):
        return torch.tensor(value, dtype=torch.float32, device=device)
    if attribute.name in ("value_int", "value_ints"):
        return torch.tensor(value, dtype=torch.int64, device=device)
    raise UnsupportedOpError("Constant", node.name or "Constant", f"attribute {attribute.name} is not supported")


def _to_torch(array: np.ndarray, device) -> torch.Tensor:
    if array.dtype == object or array.dtype.kind in "SU":
        raise UnsupportedOpError("initializer", "?", "string tensors are not supported")
    if array.dtype == np.uint16 or array.dtype == np.uint32 or array.dtype == np.uint64:
        array = array.astype(np.int64)
    if array.dtype.name == "float8_e4m3fn":  # ml_dtypes' type (onnx's numpy helper): torch reads its bytes
        return torch.from_numpy(np.array(array, order="C").view(np.uint8)).view(torch.float8_e4m3fn).to(device)
    if array.dtype.name == "bfloat16":  # likewise
        return torch.from_numpy(np.array(array, order="C").view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(np.array(array, order="C")).to(device)  # a copy; keeps 0-d arrays 0-d
