"""`GpuBackend`: trimtab's own engine, built from the typed ONNX artifact by PyTorch.

One engine per static-shape profile (the shapes of all inputs), built on the first `infer` with
those shapes, or ahead of time with `build(shapes)`. Runs on CUDA when present, else on the CPU
(same lowering and kernels; used by the conformance tests on machines without a GPU).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trimtab.backends.base import Backend
from trimtab.errors import BackendUnavailableError, InvalidModelError

log = logging.getLogger(__name__)

_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
          10: np.float16, 11: np.float64}


@dataclass(frozen=True)
class BuildInfo:
    """What one engine build did: seconds in total and in lowering, whether the plan came from the
    cache, and the plan's notes (nodes, folded nodes, steps, fusions)."""

    shapes: dict
    seconds: float
    lower_seconds: float
    from_cache: bool
    notes: dict = field(default_factory=dict)


class GpuBackend(Backend):
    """Runs an artifact with trimtab's engine.

    `device` None picks "cuda" when available, else "cpu". `cache` False turns the on-disk
    engine cache off; `cache_dir` None uses `$TRIMTAB_CACHE/gpu-engines`. `cuda_graph`,
    `channels_last` and `tf32` are the engine options (see `engine.EngineOptions`).
    """

    name = "gpu"

    def __init__(self, model, *, device: str | None = None, cache: bool = True, cache_dir: str | Path | None = None,
                 cuda_graph: bool = True, channels_last: bool = True, tf32: bool = False, fusion: bool = True) -> None:
        super().__init__(model)
        torch = _import_torch()
        from trimtab.backends.gpu.engine import EngineOptions

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("requested backend 'gpu' on cuda; torch sees no CUDA device",
                                          hint="check the driver (nvidia-smi), or pass device='cpu'")
        self.options = EngineOptions(channels_last=channels_last, cuda_graph=cuda_graph, tf32=tf32)
        self.cache, self.cache_dir, self.fusion = cache, cache_dir, fusion
        self.builds: list[BuildInfo] = []
        self._engines: dict = {}
        self._choices: dict = {}  # kernel choices timed by this backend's engines, for its later ones
        self._proto = None
        self._sha256 = ""

    def _prepare(self) -> None:
        from trimtab.backends.gpu.lower import graph_inputs

        self._proto, data = _read(self.model)
        _check_op_types(self._proto)
        self._sha256 = hashlib.sha256(data).hexdigest()
        self.input_names = [value.name for value in graph_inputs(self._proto)]
        self.output_names = [value.name for value in self._proto.graph.output]
        for value in graph_inputs(self._proto):
            tensor = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
            self._input_meta[value.name] = (shape, _NUMPY.get(tensor.elem_type, np.float32))

    def build(self, shapes: dict[str, tuple[int, ...]]) -> BuildInfo:
        """Build (or load from the cache) the engine for one profile of input shapes."""
        return self._entry(shapes)[1]

    def engine(self, shapes: dict[str, tuple[int, ...]]):
        """The compiled `Engine` for one profile (built on first use)."""
        return self._entry(shapes)[0]

    def forget_engines(self) -> None:
        """Drop the engines built so far (their device memory goes with them); the next `engine`
        call builds again (from the on-disk cache where enabled)."""
        self._engines.clear()

    def _entry(self, shapes: dict):
        self.prepare()
        key = tuple(sorted((name, tuple(int(d) for d in shape)) for name, shape in shapes.items()))
        if key not in self._engines:
            self._engines[key] = self._build(dict(key))
        return self._engines[key]

    def _build(self, shapes: dict):
        from trimtab.backends.gpu import cache
        from trimtab.backends.gpu.engine import Engine
        from trimtab.backends.gpu.lower import lower

        start = time.perf_counter()
        key = cache.cache_key(self._sha256, self.device, shapes, self.fusion)
        folder = cache.entry_folder(self.cache_dir, key)
        plan = cache.load(folder) if self.cache else None
        from_cache = plan is not None
        if plan is None:
            plan = lower(self._proto, shapes, self.device, fusion=self.fusion)
            if self.cache:
                cache.store(folder, plan, key)
        lowered = time.perf_counter()
        engine = Engine(plan, self.device, self.options, self._choices)
        engine.warm_up()
        precisions = engine.layer_precisions()
        if precisions:
            engine.notes["layer_precisions"] = precisions
        choices = engine.kernel_choices()
        if choices:
            engine.notes["kernel_choices"] = choices
        if self.options.cuda_graph:
            engine.capture()
            engine.keep_faster_runner()
        info = BuildInfo({k: list(v) for k, v in shapes.items()}, time.perf_counter() - start, lowered - start,
                         from_cache, {**plan.notes, **engine.notes})
        self.builds.append(info)
        log.info("gpu engine for %s built in %.2f s (%s)", shapes, info.seconds, "cache" if from_cache else "cold")
        return engine, info

    def layer_precisions(self) -> dict[str, str]:
        """What each int8 layer ran in, in the engines built so far (the last build wins)."""
        ran: dict[str, str] = {}
        for info in self.builds:
            ran.update({name: entry["ran"] for name, entry in info.notes.get("layer_precisions", {}).items()})
        return ran

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        engine = self.engine({name: feeds[name].shape for name in self.input_names})
        inputs = {name: torch.from_numpy(np.asarray(feeds[name], order="C")).to(self.device, non_blocking=True)
                  for name in self.input_names}
        outputs = engine.run(inputs)
        return {name: _to_numpy(outputs[name]) for name in self.output_names}

    def _synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _close(self) -> None:
        self._engines.clear()
        self._proto = None


def device_description(cpu: str = "") -> str:
    """Where `GpuBackend()` runs by default: the CUDA device's name, or the CPU fallback."""
    torch = _import_torch()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA, torch {torch.__version__})"
    return f"{cpu or 'cpu'} (no CUDA device: the gpu engine ran on the CPU)"


def _check_op_types(proto) -> None:
    """Raise UnsupportedOpError for the first node whose op type the engine has no kernel for
    (forms of known ops that it cannot run are caught when a profile is built)."""
    from trimtab.backends.gpu import fused  # noqa: F401
    from trimtab.backends.gpu.errors import UnsupportedOpError
    from trimtab.backends.gpu.ops import KERNELS

    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(node.op_type, node.name or node.op_type, f"ops of domain '{node.domain}' are not supported")
        if node.op_type != "Constant" and node.op_type not in KERNELS:
            raise UnsupportedOpError(node.op_type, node.name or node.op_type)


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            "requested backend 'gpu'; it needs PyTorch, which is not installed",
            hint="pip install 'trimtab[gpu]'",
        ) from exc
    return torch


def _read(model) -> tuple:
    """(ModelProto, serialized bytes) of a path, a ModelProto, or anything with `.proto`."""
    import onnx

    model = getattr(model, "proto", model)
    try:
        if isinstance(model, (str, Path)):
            proto = onnx.load(str(model))
        else:
            proto = model
        return proto, proto.SerializeToString()
    except Exception as exc:
        raise InvalidModelError(f"could not read the model for the gpu backend: {exc}",
                                hint="check the file with `python -m onnx.checker`") from exc


def _to_numpy(value) -> np.ndarray:
    import torch

    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.detach().to("cpu").numpy().copy()


def device_peak_bytes(model, feeds: dict[str, np.ndarray], **options) -> int | None:
    """GPU memory one engine needs for `feeds`, measured alone: the high-water mark of PyTorch's
    CUDA allocator over building the engine (from the cache when present) and running it once,
    minus what was allocated before: weights, activations, the CUDA graph's pool and workspaces.
    None without CUDA (the CPU fallback has no device memory to report)."""
    torch = _import_torch()
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with GpuBackend(model, device="cuda", **options) as backend:
        backend.infer(feeds)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    torch.cuda.empty_cache()
    return max(0, peak - before)
