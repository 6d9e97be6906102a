"""Calibration on trimtab's gpu engine: activations stay on the device, histograms are counted there.

The fp32 model is lowered with every calibrated tensor as an extra output and without fusions (so
each tensor keeps its ONNX name and value), TF32 off. Per tensor and batch only a summary comes
back to the host: count, signed min and max, max |x|, and the bins of |x| counted on the device
(`torch.bincount`) with the same float32 arithmetic as the CPU collector, so the histograms are the
ones ONNX Runtime's activations would give up to the engines' float rounding. One engine per batch
shape is kept at a time (a smaller last batch, or text padded per batch, builds another).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from trimtab.calibrate.histogram import SENTINEL_ABS, HistogramSet, _non_finite_error

if TYPE_CHECKING:
    import onnx
    import torch


def collect_on_gpu(proto: onnx.ModelProto, dataset, names: list[str], channels: set[str], hist_set: HistogramSet,
                   batch_size: int, progress=None, device: str | None = None) -> int:
    """Fold every batch of `dataset` into `hist_set` (and channel ranges of `channels`); returns the
    number of samples seen."""
    import torch

    from trimtab.backends.gpu import GpuBackend

    backend = GpuBackend(_with_outputs(proto, names), device=device, cache=False, cuda_graph=False, fusion=False)
    done, total, current = 0, len(dataset), None
    with backend, torch.inference_mode():
        backend.prepare()
        hist_set.meta["collector"] = f"gpu engine ({backend.device.type})"
        for batch in dataset.batches(batch_size):
            feeds = {name: torch.from_numpy(np.ascontiguousarray(batch.inputs[name])).to(backend.device)
                     for name in backend.input_names}
            shapes = {name: tuple(value.shape) for name, value in feeds.items()}
            if shapes != current:  # keep one engine: its buffers are the size of every activation
                backend.forget_engines()
                current = shapes
            outputs = backend.engine(shapes).run(feeds)
            for name in names:
                value = feeds.get(name, outputs.get(name))
                if value is None or value.dtype != torch.float32:
                    continue
                fold(hist_set, name, value, batch.sources)
                if name in channels and value.dim() >= 1 and value.shape[-1] > 0:
                    fold_channels(hist_set, name, value)
            del outputs
            done += len(batch)
            if progress is not None:
                progress(done, total)
    return done


def _with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    import onnx

    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    known = {value.name for value in exposed.graph.output} | {value.name for value in exposed.graph.input}
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names if name not in known)
    return exposed


def fold(hist_set: HistogramSet, name: str, value: torch.Tensor, sources: Sequence[str] = ()) -> None:
    """`HistogramSet.update` for a device tensor: the same histogram, counted where the values are."""
    import torch

    hist = hist_set.histogram(name)
    signed = value.reshape(-1)
    if signed.numel() == 0:
        return
    flat = signed.abs()
    peak = float(flat.max())  # NaN propagates through max: one pass checks finiteness
    if not math.isfinite(peak):
        raise _non_finite_error(name, value.cpu().numpy(), sources)
    if peak >= SENTINEL_ABS:
        keep = flat < SENTINEL_ABS
        kept = int(keep.sum())
        hist.sentinel_count += flat.numel() - kept
        if kept == 0:
            return
        flat, signed = flat[keep], signed[keep]
        peak = float(flat.max())
    low, high = torch.aminmax(signed)

    def bin_counts(scale: np.float32) -> np.ndarray:
        index = (flat * torch.tensor(scale, device=flat.device)).to(torch.int64).clamp_(max=hist.bins - 1)
        return torch.bincount(index, minlength=hist.bins).cpu().numpy()

    hist.add_batch(int(flat.numel()), float(low), float(high), peak, bin_counts)


def fold_channels(hist_set: HistogramSet, name: str, value: torch.Tensor) -> None:
    """`HistogramSet.update_channels` for a device tensor (per-channel min/max of the last axis)."""
    import torch

    rows = value.reshape(-1, value.shape[-1])
    if rows.numel() == 0:
        return
    flagged = rows.abs() >= SENTINEL_ABS
    low = torch.where(flagged, torch.inf, rows).amin(dim=0)
    high = torch.where(flagged, -torch.inf, rows).amax(dim=0)
    hist_set.channel_range(name, value.shape[-1]).add(low.double().cpu().numpy(), high.double().cpu().numpy())
