"""Bench-only helpers: a stand-in for the calibrate stage (min/max ranges from an ONNX Runtime
run that exposes every float tensor) and a prepared-Model wrapper, until those stages land."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort

from trimtab.calibrate.ranges import TensorRange
from trimtab.load.model import Model


def prepared_model(proto: onnx.ModelProto, name: str) -> Model:
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    initialisers = {init.name for init in proto.graph.initializer}
    return Model(
        proto=proto,
        sha256=hashlib.sha256(proto.SerializeToString()).hexdigest(),
        name=name,
        input_names=tuple(v.name for v in proto.graph.input if v.name not in initialisers),
        output_names=tuple(v.name for v in proto.graph.output),
    )


def minmax_ranges(proto: onnx.ModelProto, batches: list[dict[str, np.ndarray]]) -> dict[str, TensorRange]:
    """Observed min/max of every float tensor over `batches` (amax = max |x|)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    known = {o.name for o in exposed.graph.output}
    float_values = [v for v in exposed.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    exposed.graph.output.extend(v for v in float_values if v.name not in known)
    floats_in = [v.name for v in exposed.graph.input if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    low, high = {}, {}
    for feeds in batches:
        values = dict(zip(names, session.run(None, feeds)))
        values.update({name: feeds[name] for name in floats_in})
        for name, value in values.items():
            if value.dtype != np.float32 or value.size == 0:
                continue
            low[name] = min(low.get(name, np.inf), float(value.min()))
            high[name] = max(high.get(name, -np.inf), float(value.max()))
    return {name: TensorRange(max(abs(low[name]), abs(high[name])), low[name], high[name]) for name in low}


def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Stand-in for the load stage's constant folding: ONNX Runtime's basic (standard-ops-only)
    graph optimisations, saved back as ONNX."""
    import os
    import tempfile

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = os.path.join(folder, "folded.onnx")
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)
