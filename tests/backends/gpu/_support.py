"""Helpers for the gpu backend's conformance tests: ONNX Runtime CPU as the reference, and tiny
one-op graphs built in code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def reference(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], *, optimize: bool = False) -> dict[str, np.ndarray]:
    """ONNX Runtime CPU on the same file (unoptimised: the ONNX reference semantics)."""
    from trimtab.backends.ort_cpu import OrtCpuBackend

    try:
        with OrtCpuBackend(proto, threads=1, optimize=optimize) as backend:
            return backend.infer(feeds)
    except Exception as exc:  # an older ONNX Runtime beside CUDA PyTorch (the GPU machine has 1.30)
        if "Unsupported model IR version" in str(exc):
            pytest.skip(f"the reference is unavailable: this ONNX Runtime cannot read the file ({exc})"[:300])
        raise


def run_gpu(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], device: str = "cpu", **options) -> dict[str, np.ndarray]:
    from trimtab.backends.gpu import GpuBackend

    options.setdefault("cache", False)
    with GpuBackend(proto, device=device, **options) as backend:
        return backend.infer(feeds)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (0 for two all-zero tensors)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.abs(want).max() if want.size else 0.0
    diff = np.abs(got - want).max() if want.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    """A checked model from nodes; `inputs`/`outputs` are (name, elem_type, shape) triples."""
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto


F32, I64, F16 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT16
