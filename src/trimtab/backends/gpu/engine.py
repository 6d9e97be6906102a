"""An engine: one `Plan` compiled for one device and one static-shape profile.

Compiling moves the constants to the device once (4-D convolution weights in channels_last on
CUDA), makes every step's kernel, and assigns each tensor a slot that is freed after its last
reader. `run` executes the step list; on CUDA, `capture` records it once as a CUDA graph with
static input and output buffers, and later calls replay it (copy inputs in, replay, read outputs).

Numerics: fp32 runs with TF32 off unless `tf32=True` (cuDNN and cuBLAS flags are set around every
run and restored after, never left changed); cuDNN's autotuner (`benchmark`) picks conv algorithms
during the warm-up, on the profile's real shapes.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from trimtab.backends.gpu import fused  # noqa: F401  (registers the trimtab.* kernels)
from trimtab.backends.gpu.errors import UnsupportedOpError
from trimtab.backends.gpu.ops import KERNELS, NodeSpec
from trimtab.backends.gpu.plan import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    channels_last: bool = True  # 4-D convs in NHWC on CUDA (tensor cores want it)
    cuda_graph: bool = True  # capture the step list once per profile on CUDA
    tf32: bool = False  # allow TF32 for fp32 convs and matmuls

    def __post_init__(self) -> None:
        for name in ("channels_last", "cuda_graph", "tf32"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


class Engine:
    def __init__(self, plan: Plan, device: torch.device | str, options: EngineOptions = EngineOptions(),
                 choices: dict | None = None) -> None:
        self.plan, self.device, self.options = plan, torch.device(device), options
        self.cuda = self.device.type == "cuda"
        channels_last = self.cuda and options.channels_last
        self._constants = {name: self._place(name, value, channels_last) for name, value in plan.constants.items()}
        slots: dict[str, int] = {name: i for i, name in enumerate(plan.inputs)}
        self._program = []
        self._cast_inputs = self._inputs_only_cast() if channels_last else set()
        self.notes: dict = {}
        for position, step in enumerate(plan.steps):
            make = KERNELS.get(step.op)
            if make is None:
                raise UnsupportedOpError(step.op, step.name)
            args = [self._constants.get(n) if n else None for n in step.inputs]
            spec = NodeSpec(step.op, step.name, step.attrs, [a if n in self._constants else None for n, a in zip(step.inputs, args)],
                            [tuple(plan.shapes[n]) if n else None for n in step.inputs], plan.opset,
                            [bool(n) for n in step.inputs], self.device.type, choices)
            kernel = make(spec)
            if step.op == "Cast" and step.inputs[0] in self._cast_inputs:
                kernel = _cast_to_channels_last(plan.dtype(step.outputs[0]))
            for name in step.outputs:
                if name:
                    slots.setdefault(name, len(slots))
            template = [("c", self._constants[n]) if n in self._constants else ("v", slots[n]) if n else ("c", None)
                        for n in step.inputs]
            self._program.append((kernel, template, [slots[n] if n else -1 for n in step.outputs], step))
        self._slots = slots
        self._frees = self._last_uses()
        self._graph = None
        self._static_inputs: dict[str, torch.Tensor] = {}
        self._static_outputs: dict[str, torch.Tensor] = {}

    def _inputs_only_cast(self) -> set[str]:
        """4-D float graph inputs read only by Casts (an fp16 artifact's input): the Cast writes the
        channels_last copy itself, one pass instead of a layout copy in fp32 and then a Cast."""
        readers: dict[str, list] = {}
        for step in self.plan.steps:
            for name in step.inputs:
                readers.setdefault(name, []).append(step)
        return {name for name in self.plan.inputs
                if len(self.plan.shapes[name]) == 4 and self.plan.dtypes[name].startswith("float")
                and readers.get(name) and all(step.op == "Cast" for step in readers[name])}

    def _place(self, name: str, value: torch.Tensor, channels_last: bool) -> torch.Tensor:
        value = value.to(self.device)
        if channels_last and value.dim() == 4 and value.is_floating_point() and value.numel() > 1 and self._is_conv_weight(name):
            value = value.contiguous(memory_format=torch.channels_last)
        return value

    def _is_conv_weight(self, name: str) -> bool:
        return any(step.op in ("Conv", "trimtab.Conv", "ConvTranspose") and len(step.inputs) > 1 and step.inputs[1] == name
                   for step in self.plan.steps)

    def _last_uses(self) -> list[list[int]]:
        """Per step, the slots to release after it (read for the last time, not a graph output)."""
        last: dict[int, int] = {}
        for position, (_, template, _, _) in enumerate(self._program):
            for kind, slot in template:
                if kind == "v":
                    last[slot] = position
        keep = {self._slots[n] for n in self.plan.outputs if n in self._slots}
        frees: list[list[int]] = [[] for _ in self._program]
        for slot, position in last.items():
            if slot not in keep:
                frees[position].append(slot)
        return frees

    # execution -------------------------------------------------------------------------------
    def flags(self):
        """The backend flags every run uses (restored on exit)."""
        if not self.cuda:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False,
                                                       allow_tf32=self.options.tf32))
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.options.tf32
        stack.callback(setattr, torch.backends.cuda.matmul, "allow_tf32", previous)
        return stack

    def _execute(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        env: list = [None] * len(self._slots)
        channels_last = self.cuda and self.options.channels_last
        for name in self.plan.inputs:
            value = inputs[name]
            if channels_last and value.dim() == 4 and value.is_floating_point() and name not in self._cast_inputs:
                value = value.contiguous(memory_format=torch.channels_last)
            env[self._slots[name]] = value
        for (kernel, template, outs, _), frees in zip(self._program, self._frees):
            result = kernel(*[env[ref] if kind == "v" else ref for kind, ref in template])
            if len(outs) == 1:
                env[outs[0]] = result
            else:
                for slot, value in zip(outs, result):
                    if slot >= 0:
                        env[slot] = value
            for slot in frees:
                env[slot] = None
        return {name: env[self._slots[name]] if name in self._slots else self._constants[name]
                for name in self.plan.outputs}

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs for `inputs` (tensors on the engine's device, the profile's shapes). With a
        captured graph the returned tensors are the graph's static buffers: read or copy them
        before the next run."""
        with torch.inference_mode():
            if self._graph is not None:
                for name, value in inputs.items():
                    self._static_inputs[name].copy_(value, non_blocking=True)
                self._graph.replay()
                return self._static_outputs
            with self.flags():
                return self._execute(inputs)

    def layer_precisions(self) -> dict[str, dict]:
        """Per layer that chooses its kernel (int8 linear layers): the precision it runs in and the
        times measured for each choice (ms; empty off CUDA). Known after `warm_up`."""
        return {step.name: {"ran": kernel.tactic["chosen"], "ms": dict(kernel.tactic["ms"])}
                for kernel, _, _, step in self._program
                if getattr(kernel, "tactic", None) and kernel.tactic.get("chosen")}

    def kernel_choices(self) -> dict[str, dict]:
        """Per step that picks between kernels by timing (attention: Triton or SDPA): the kernel it
        runs and the times measured (ms). Known after `warm_up`."""
        return {step.name: {"ran": kernel.choice["chosen"], "ms": dict(kernel.choice["ms"])}
                for kernel, _, _, step in self._program
                if getattr(kernel, "choice", None) and kernel.choice.get("chosen")}

    def placeholder_inputs(self) -> dict[str, torch.Tensor]:
        return {name: torch.zeros(self.plan.shapes[name], dtype=self.plan.dtype(name), device=self.device)
                for name in self.plan.inputs}

    def warm_up(self, runs: int = 2) -> None:
        """Run on placeholder inputs: kernels pick their algorithms (cuDNN autotune) now."""
        inputs = self.placeholder_inputs()
        with torch.inference_mode(), self.flags():
            for _ in range(runs):
                self._execute(inputs)
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def capture(self) -> None:
        """Record the step list as a CUDA graph (CUDA only; call after `warm_up`)."""
        if not self.cuda:
            return
        self._static_inputs = self.placeholder_inputs()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), self.flags():
            with torch.cuda.stream(stream):
                self._execute(self._static_inputs)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static_outputs = self._execute(self._static_inputs)
        torch.cuda.synchronize(self.device)
        self._graph = graph

    def keep_faster_runner(self, runs: int = 5) -> dict:
        """Keep the CUDA graph only where it is faster than launching the steps one by one: at large
        batches, copying the inputs into the graph's static buffers can cost more than the launches
        the graph saves. Both are timed here (best of `runs`); the choice goes into `notes`."""
        if self._graph is None:
            return {}
        inputs = self.placeholder_inputs()
        graph_ms = self._best_ms(lambda: self.run(inputs), runs)
        graph, self._graph = self._graph, None
        stream_ms = self._best_ms(lambda: self.run(inputs), runs)
        if graph_ms <= stream_ms:
            self._graph = graph
        self.notes["runner"] = {"chosen": "cuda_graph" if self._graph is not None else "stream",
                                "cuda_graph_ms": round(graph_ms, 4), "stream_ms": round(stream_ms, 4)}
        return self.notes["runner"]

    def _best_ms(self, fn, runs: int) -> float:
        fn()
        times = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return min(times)


def _cast_to_channels_last(dtype: torch.dtype):
    def run(x):
        return x.to(dtype=dtype, memory_format=torch.channels_last)

    return run
