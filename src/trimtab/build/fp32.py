"""The fp32 candidate: the prepared model as it is, the baseline every other candidate is
compared with."""

from __future__ import annotations

from trimtab.build._graph import copy_model
from trimtab.build.artifact import Artifact
from trimtab.options import Precision


def build_fp32(model) -> Artifact:
    """Wrap the prepared model as an artifact. Every tensor carries its own value, so the
    tensor map is the identity over the graph's float tensors."""
    from trimtab._onnx_io import is_large

    # Over 2 GB the artifact is the prepared model's own proto, not a 2 GB copy: nothing writes
    # to an artifact's proto after its build.
    proto = model.proto if is_large(model.proto) else copy_model(model.proto)
    graph = proto.graph
    names = {value.name for value in list(graph.input) + list(graph.output) + list(graph.value_info)}
    for node in graph.node:
        names.update(name for name in node.output if name)
    return Artifact(
        name="fp32",
        precision=Precision.FP32.value,
        proto=proto,
        tensor_map={name: name for name in sorted(names)},
        notes={"nodes": len(graph.node)},
    )
