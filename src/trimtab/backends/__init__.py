"""Backends execute an artifact: `ort-cpu` (embedded default), `gpu` (trimtab's own engine on
PyTorch; extra `trimtab[gpu]`), later `tensorrt`."""

from __future__ import annotations

from trimtab.backends.base import Backend
from trimtab.errors import BackendUnavailableError

AVAILABLE = ("ort-cpu", "gpu")


def get_backend(target: str, model, *, threads: int | None = None, **options) -> Backend:
    """The backend for `target`, not yet prepared."""
    if target == "ort-cpu":
        from trimtab.backends.ort_cpu import OrtCpuBackend

        return OrtCpuBackend(model, threads=threads, **options)
    if target == "gpu":
        from trimtab.backends.gpu.backend import GpuBackend

        return GpuBackend(model, **options)  # threads: the engine runs on the device, not a CPU pool
    raise BackendUnavailableError(
        f"requested backend '{target}'; available: {', '.join(AVAILABLE)}",
        hint="use --target ort-cpu or gpu (the TensorRT backend is not part of this build yet)",
    )


__all__ = ["AVAILABLE", "Backend", "get_backend"]
