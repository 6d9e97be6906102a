"""One streaming pass over the calibration data: every quantizable float tensor -> a histogram.

The model runs on ONNX Runtime's CPU provider with graph optimisation disabled, so intermediate
tensors keep the names the ONNX file gives them (the builder places Q/DQ by those names).
Each batch's tensors are folded into the histograms one at a time and released at once:
memory holds one batch of activations, never the data set's.

The inputs of weight-bearing MatMul/Gemm nodes also get a per-channel min/max over their last
axis (`HistogramSet.channels`, C values each): the statistic SmoothQuant-style smoothing needs
to move activation outlier channels into the weights (`trimtab.build.Smoothing`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from trimtab.calibrate.histogram import HistogramSet
from trimtab.errors import CalibrationError

if TYPE_CHECKING:
    import onnx

    from trimtab.data.dataset import Batch
    from trimtab.load.model import Model

log = logging.getLogger(__name__)

# These read only the shape of their input: what follows them is shape arithmetic, not activations.
SHAPE_OPS = frozenset({"Shape", "Size"})

Progress = Callable[[int, int], None]


class DatasetLike(Protocol):
    """What calibration needs of `trimtab.data.Dataset`."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int): ...

    def fingerprint(self) -> str: ...


def quantizable_tensors(proto: onnx.ModelProto) -> list[str]:
    """Names of the tensors whose ranges calibration should measure, in graph order.

    Kept: float graph inputs, and outputs of nodes that depend on the data (through a path that
    does not pass Shape/Size) and are float32 or of unknown type (checked again at run time).
    Dropped: initialisers, Constant outputs and anything computed only from them or from shapes,
    and tensors typed int/bool/float16/...
    """
    from onnx import TensorProto

    graph = proto.graph
    initialisers = {init.name for init in graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    dynamic = {v.name for v in graph.input if v.name not in initialisers}
    names = [v.name for v in graph.input if v.name in dynamic and types.get(v.name) == TensorProto.FLOAT]
    for node in graph.node:
        if node.op_type in SHAPE_OPS or not any(name in dynamic for name in node.input):
            continue
        for output in node.output:
            if not output:
                continue  # an optional output left unnamed
            dynamic.add(output)
            if types.get(output, TensorProto.UNDEFINED) in (TensorProto.FLOAT, TensorProto.UNDEFINED):
                names.append(output)
    return names


def matmul_inputs(proto: onnx.ModelProto) -> list[str]:
    """The activation inputs of MatMul/Gemm nodes with a constant 2-D weight (Gemm without
    transA): the tensors whose channels (last axis) are the weight's input rows."""
    initialisers = {init.name: init for init in proto.graph.initializer}
    names = []
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        weight = initialisers.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or node.input[0] in initialisers:
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        names.append(node.input[0])
    return list(dict.fromkeys(names))


def collect_histograms(
    model: Model,
    dataset: DatasetLike,
    *,
    batch_size: int = 8,
    tensors: Sequence[str] | None = None,
    progress: Progress | None = None,
    channel_stats: bool = True,
    target: str = "ort-cpu",
) -> HistogramSet:
    """Run `model` over `dataset` once and return a histogram of |x| per float32 tensor.

    `target` "ort-cpu" runs the model on ONNX Runtime's CPU provider; "gpu" on trimtab's gpu
    engine, counting the histograms on the device (`collect_gpu`; CUDA when present).

    `tensors` restricts the pass to these names (default: `quantizable_tensors`).
    `channel_stats` also records per-channel min/max of the calibrated MatMul/Gemm inputs
    (`matmul_inputs`) in `HistogramSet.channels`.
    `progress(done, total)` is called after each batch, counted in samples.
    Raises CalibrationError on an empty data set, an unknown tensor name, or NaN/Inf in a tensor
    (naming the tensor and the samples of the batch).
    """
    from trimtab.backends.ort_cpu import OrtCpuBackend

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = _resolve_tensors(model.proto, tensors)
    inputs = {v.name for v in model.proto.graph.input}
    extra = [name for name in names if name not in inputs]
    hist_set = HistogramSet(meta={"model_sha256": model.sha256, "batch_size": batch_size,
                                  "channel_stats": bool(channel_stats)})
    channels = set(matmul_inputs(model.proto)) & set(names) if channel_stats else set()
    total = len(dataset)
    done = 0
    log.info("calibrating %d tensors of %s over %d samples on %s", len(names), model.name, total, target)
    if target == "gpu":
        from trimtab.calibrate.collect_gpu import collect_on_gpu

        done = collect_on_gpu(model.proto, dataset, names, channels, hist_set, batch_size, progress)
    elif target != "ort-cpu":
        raise ValueError(f"calibration runs on ort-cpu or gpu, not {target!r}")
    else:
        hist_set.meta["collector"] = "onnxruntime (cpu)"
        with OrtCpuBackend(model.proto, optimize=False, extra_outputs=extra) as backend:
            for batch in dataset.batches(batch_size):
                outputs = backend.infer(batch.inputs)
                _fold_batch(hist_set, names, batch, outputs, channels)
                del outputs
                done += len(batch)
                if progress is not None:
                    progress(done, total)
    if done == 0:
        raise CalibrationError(
            "the calibration data gave no samples",
            hint="point --calib at a folder or file with at least one sample (a few hundred is typical)",
        )
    hist_set.meta["num_samples"] = done
    _log_skipped(names, hist_set)
    return hist_set


def _fold_batch(hist_set: HistogramSet, names: list[str], batch: Batch, outputs: dict[str, np.ndarray],
                channels: set[str] = frozenset()) -> None:
    """Histogram each tensor of one batch, releasing each array as soon as it is counted."""
    for name in names:
        array = batch.inputs[name] if name in batch.inputs else outputs.pop(name, None)
        if array is None or array.dtype != np.float32:
            continue  # typed unknown before the run and not float32 after all
        hist_set.update(name, array, batch.sources)
        if name in channels and array.ndim >= 1 and array.shape[-1] > 0:
            hist_set.update_channels(name, array)
        del array


def _resolve_tensors(proto: onnx.ModelProto, tensors: Sequence[str] | None) -> list[str]:
    available = quantizable_tensors(proto)
    if tensors is None:
        if not available:
            raise CalibrationError(
                "the model has no float tensors computed from its inputs; there is nothing to calibrate",
                hint="check that the model's inputs feed its computation (an all-constant graph needs no int8)",
            )
        return available
    unknown = [name for name in tensors if name not in set(available)]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise CalibrationError(
            f"asked to calibrate tensors that are not float activations of the model: {shown}",
            hint="use names from trimtab.calibrate.quantizable_tensors(model.proto)",
        )
    return list(dict.fromkeys(tensors))


def _log_skipped(names: list[str], hist_set: HistogramSet) -> None:
    skipped = [name for name in names if name not in hist_set]
    if skipped:
        log.debug("not float32 at run time, not calibrated: %s", skipped)
    dominated = hist_set.dominated_tensors()
    if dominated:
        log.warning(
            "%d tensors are mostly sentinel values (|x| >= 1e30, e.g. attention masks); keep them in float: %s",
            len(dominated),
            dominated[:5],
        )
