"""Measured fallback cost per node: how much slower a node runs in higher precision.

ONNX Runtime profiles kernels under the names of its optimised graph, not the model's:

    <node>_token_<n>     a node its Q/DQ fusion rewrote (QLinearConv, QLinearMatMul, QGemm ...)
    <tensor>_nchwc       a Conv its NCHWc layout pass rewrote, named after the output tensor of
                         the last node fused into it (the Relu/Clip/Add after the Conv)
    <node>               anything else

`model_node_times` maps those names back to the model's nodes (time of a fused activation goes to
the Conv/MatMul/Gemm it was fused into), and `fallback_costs` subtracts the int8 time from the
fp32 time per node. Costs are estimates for ordering the search; every plan the search keeps is
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
