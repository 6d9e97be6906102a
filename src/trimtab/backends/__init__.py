"""Backends execute an artifact: `ort-cpu` (embedded default), later `gpu` and `tensorrt`."""

from __future__ import annotations

from trimtab.backends.base import Backend
from trimtab.errors import BackendUnavailableError

AVAILABLE = ("ort-cpu",)


def get_backend(target: str, model, *, threads: int | None = None, **options) -> Backend:
    """The backend for `target`, not yet prepared."""
    if target == "ort-cpu":
        from trimtab.backends.ort_cpu import OrtCpuBackend

        return OrtCpuBackend(model, threads=threads, **options)
    raise BackendUnavailableError(
        f"requested backend '{target}'; available: {', '.join(AVAILABLE)}",
        hint="use --target ort-cpu (the GPU engine and TensorRT backends are not part of this build yet)",
    )


__all__ = ["AVAILABLE", "Backend", "get_backend"]
