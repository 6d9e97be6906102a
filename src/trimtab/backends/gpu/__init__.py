"""The `gpu` backend: trimtab's own engine on PyTorch (and later Triton), built from the typed
ONNX artifact. Stages, in processing order:

    lower.py   ONNX + one static-shape profile -> Plan (constants folded, shapes fixed)
    fuse.py    Plan rewrites: BN folding, conv/linear epilogues, Q/DQ -> fake-quant
    ops.py     ONNX ops as torch kernels;  fused.py  the fused kernels
    plan.py    the Plan (JSON + tensors), which cache.py stores per (artifact, device, profile, versions)
    engine.py  Plan -> Engine on a device: weights placed once, channels_last, CUDA graph capture
    backend.py GpuBackend(Backend): prepare / infer / close

Importing this package does not import torch; `GpuBackend` does, when constructed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trimtab.backends.gpu.backend import BuildInfo, GpuBackend
    from trimtab.backends.gpu.errors import UnsupportedOpError


def __getattr__(name: str):
    if name in ("GpuBackend", "BuildInfo"):
        from trimtab.backends.gpu import backend

        return getattr(backend, name)
    if name == "UnsupportedOpError":
        from trimtab.backends.gpu.errors import UnsupportedOpError

        return UnsupportedOpError
    raise AttributeError(name)


__all__ = ["BuildInfo", "GpuBackend", "UnsupportedOpError"]
