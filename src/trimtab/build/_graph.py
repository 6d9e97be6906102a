"""Small read-only views over an ONNX graph shared by the builders (producers, consumers,
element types, initialisers) and a name allocator that never collides with existing names."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

FLOAT = TensorProto.FLOAT


class GraphIndex:
    """Indexes one graph. Rebuild it after a rewrite; it does not track edits."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initialisers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.graph_inputs = {value.name for value in graph.input}
        self.graph_outputs = {value.name for value in graph.output}
        self.elem_types = _elem_types(graph)

    def elem_type(self, name: str) -> int | None:
        return self.elem_types.get(name)

    def is_float(self, name: str) -> bool:
        return self.elem_types.get(name) == FLOAT

    def is_constant(self, name: str) -> bool:
        return name in self.initialisers

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initialisers[name])


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


class NameAllocator:
    """Hands out tensor/node names derived from a base name and unused anywhere in the graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used = {init.name for init in graph.initializer}
        self.used |= {value.name for value in list(graph.input) + list(graph.output) + list(graph.value_info)}
        for node in graph.node:
            self.used.update(node.input)
            self.used.update(node.output)
            self.used.add(node.name)

    def new(self, base: str) -> str:
        name, counter = base, 1
        while name in self.used:
            name, counter = f"{base}_{counter}", counter + 1
        self.used.add(name)
        return name


def copy_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def topological_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes in a valid execution order (ONNX requires the stored order to be one,
    but rewritten graphs are re-sorted here before saving)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            names = ", ".join(node.name or node.op_type for node in remaining[:5])
            raise ValueError(f"graph has a cycle or dangling inputs at: {names}")
        pending = remaining
    return ordered


def replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Replace the graph's node list with `nodes` in topological order."""
    del graph.node[:]
    graph.node.extend(nodes)
    ordered = topological_nodes(graph)
    del graph.node[:]
    graph.node.extend(ordered)


def fold_zero_pads(graph: onnx.GraphProto) -> list[str]:
    """Merge each zero-valued constant Pad whose only consumers are Convs into their `pads`
    attribute. Exact (the Conv pads with zeros too) and needed before Q/DQ insertion: a Q/DQ
    pair between Pad and Conv stops ONNX Runtime's own Pad fusion and the integer Conv fusion.
    Returns the names of the Pads removed."""
    index = GraphIndex(graph)
    removed = []
    for pad in list(graph.node):
        spatial = _spatial_zero_pads(pad, index)
        consumers = index.consumers.get(pad.output[0], []) if pad.op_type == "Pad" else []
        if spatial is None or not consumers or pad.output[0] in index.graph_outputs:
            continue
        if not all(node.op_type == "Conv" and _explicit_pads(node) for node in consumers):
            continue
        for conv in consumers:
            _add_conv_pads(conv, spatial)
            conv.input[0] = pad.input[0]
        graph.node.remove(pad)
        removed.append(pad.name or pad.output[0])
        stale = [value for value in graph.value_info if value.name == pad.output[0]]
        for value in stale:
            graph.value_info.remove(value)
    return removed


def _spatial_zero_pads(pad: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """[begin..., end...] over spatial axes when `pad` pads only those, with zeros, in
    constant mode; else None."""
    if pad.op_type != "Pad":
        return None
    attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in pad.attribute}
    if attrs.get("mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(pad.input) < 2 or not index.is_constant(pad.input[1]):
        return None
    has_value = len(pad.input) > 2 and bool(pad.input[2])
    if has_value and (not index.is_constant(pad.input[2]) or float(index.array(pad.input[2])) != 0.0):
        return None
    if len(pad.input) > 3 and pad.input[3]:
        return None  # explicit axes: rare, not handled
    pads = [int(v) for v in index.array(pad.input[1]).reshape(-1)]
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if rank < 3 or any(begins[:2]) or any(ends[:2]) or min(pads) < 0:
        return None
    return begins[2:] + ends[2:]


def _explicit_pads(conv: onnx.NodeProto) -> bool:
    attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in conv.attribute}
    return attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")


def _add_conv_pads(conv: onnx.NodeProto, spatial: list[int]) -> None:
    existing = next((attr for attr in conv.attribute if attr.name == "pads"), None)
    current = list(existing.ints) if existing is not None else [0] * len(spatial)
    merged = [a + b for a, b in zip(current, spatial)]
    if existing is not None:
        conv.attribute.remove(existing)
    conv.attribute.append(onnx.helper.make_attribute("pads", merged))
