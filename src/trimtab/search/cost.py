"""Measured fallback cost per node: how much slower a node runs in higher precision.

ONNX Runtime profiles kernels under the names of its optimised graph, not the model's:

    <node>_token_<n>     a node its Q/DQ fusion rewrote (QLinearConv, QLinearMatMul, QGemm ...)
    <tensor>_nchwc       a Conv its NCHWc layout pass rewrote, named after the output tensor of
                         the last node fused into it (the Relu/Clip/Add after the Conv)
    <node>               anything else

`model_node_times` maps those names back to the model's nodes (time of a fused activation goes to
the Conv/MatMul/Gemm it was fused into), and `fallback_costs` subtracts the int8 time from the
fp32 time per node.

Per-kernel timings on a busy 2-core machine jitter by tens of percent, and the search's order
must not: `rate_costs` turns them into (measured ms per unit of work for the node's kind) x (the
node's work, from its weight and output shapes). The rate is the median over every node of a
kind (Conv, depthwise Conv, MatMul, Gemm), so one noisy kernel cannot reorder the search, and two
nodes of one kind compare by their work alone. Costs order the search; every plan it keeps is
still timed end to end.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"_token_\d+$")
_COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
_MAX_WALK = 4  # fused chains are short: Conv -> Add -> Relu at most in practice


def model_node_times(profile_ms: dict[str, float], graph) -> dict[str, float]:
    """`profile_ms`: ONNX Runtime kernel name -> ms per run; `graph`: the model's GraphProto
    (the fp32 model: int8 builds keep its node names). Unknown names (inserted Q/DQ, layout
    reorders) are dropped."""
    by_name = {node.name: node for node in graph.node if node.name}
    producer = {out: node for node in graph.node for out in node.output}
    times: dict[str, float] = {}
    for kernel, ms in profile_ms.items():
        node = _model_node(kernel, by_name, producer)
        if node is not None:
            times[node.name] = times.get(node.name, 0.0) + ms
    return times


def fallback_costs(fp32_ms: dict[str, float], int8_ms: dict[str, float]) -> dict[str, float]:
    """Node -> ms per run the node adds when it returns from int8 to fp32 (never negative)."""
    return {name: max(fp32_ms.get(name, 0.0) - int8_ms.get(name, 0.0), 0.0) for name in set(fp32_ms) | set(int8_ms)}


def rate_costs(costs_ms: dict[str, float], graph) -> dict[str, float]:
    """Node -> cost, with every node whose work is known costed at its kind's median rate
    (ms per unit of work); other nodes keep their measured cost."""
    work = node_work(graph)
    rates: dict[str, list[float]] = {}
    for node in graph.node:
        if node.name in work and costs_ms.get(node.name, 0.0) > 0:
            rates.setdefault(_kind(node), []).append(costs_ms[node.name] / work[node.name])
    median = {kind: sorted(values)[len(values) // 2] for kind, values in rates.items()}
    out = dict(costs_ms)
    for node in graph.node:
        if node.name in work:
            out[node.name] = median.get(_kind(node), 0.0) * work[node.name]
    return out


def node_work(graph) -> dict[str, float]:
    """Multiply-accumulates per sample of the Conv/ConvTranspose/MatMul/Gemm nodes with a constant
    weight, from the weight's size and the output's known spatial/sequence dims (symbolic dims
    count 1: they scale every node alike)."""
    weights = {init.name: init for init in graph.initializer}
    shapes = {info.name: info.type.tensor_type.shape for info in [*graph.value_info, *graph.output]}
    work = {}
    for node in graph.node:
        if node.op_type not in _COMPUTE_OPS or not node.name:
            continue
        weight = next((weights[i] for i in node.input[1:2] if i in weights), None)
        if weight is None:
            continue
        size = 1
        for dim in weight.dims:
            size *= dim
        shape = shapes.get(node.output[0])
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in shape.dim] if shape is not None else []
        # Conv: every output position applies the kernel; MatMul/Gemm: every row but the last axis
        inner = dims[2:] if node.op_type.startswith("Conv") else dims[1:-1]
        for dim in inner:
            size *= max(dim, 1)
        work[node.name] = float(size)
    return work


def _kind(node) -> str:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return f"{node.op_type}/depthwise" if node.op_type == "Conv" and group > 1 else node.op_type


def _model_node(kernel: str, by_name: dict, producer: dict):
    name = _TOKEN.sub("", kernel)
    if name in by_name:
        return _fused_into(by_name[name], producer)
    if name.endswith("_nchwc") and name[: -len("_nchwc")] in producer:
        return _fused_into(producer[name[: -len("_nchwc")]], producer)
    return None


def _fused_into(node, producer: dict):
    """The compute node an activation or residual Add was fused into (the node itself if none
    lies within a few steps upstream)."""
    current = node
    for _ in range(_MAX_WALK):
        if current.op_type in _COMPUTE_OPS:
            return current
        upstream = [producer[i] for i in current.input if i in producer]
        if not upstream:
            break
        current = next((n for n in upstream if n.op_type in _COMPUTE_OPS), upstream[0])
    return current if current.op_type in _COMPUTE_OPS else node
