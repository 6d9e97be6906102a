"""Symmetric int8 weight quantization, per output channel or per tensor.

TensorRT and ONNX Runtime's U8S8 kernels both take int8 weights with zero point 0, per-channel
along the output axis (Conv: 0, ConvTranspose: 1, MatMul/Gemm: the output axis, see DESIGN.md):
    amax_c = max |w[c, ...]|,   scale_c = amax_c / 127,
    q = clip(round_half_even(w / scale_c), -127, 127),   w ~ q * scale_c,
so |w - q scale_c| <= scale_c / 2 for every element. Rounding is half-to-even and the division is
done in float32, as ONNX QuantizeLinear does, so these q equal what a runtime would compute.

An all-zero channel gets scale 1.0 (not 0 or a tiny value): its q is 0 whatever the scale, and
runtimes that fold a float bias into int32 as bias / (scale_x * scale_w) would overflow on a tiny one.
"""

from __future__ import annotations

import numpy as np

INT8_MAX = 127
ZERO_SCALE = 1.0


def symmetric_scale(amax: np.ndarray | float) -> np.ndarray:
    """scale = amax / 127 as float32, with amax == 0 mapped to ZERO_SCALE."""
    amax = np.asarray(amax, dtype=np.float64)
    if np.any(~np.isfinite(amax)) or np.any(amax < 0):
        raise ValueError("amax must be finite and non-negative")
    return np.where(amax > 0, amax / INT8_MAX, ZERO_SCALE).astype(np.float32)


def channel_amax(w: np.ndarray, axis: int) -> np.ndarray:
    """max |w| over every axis but `axis`: one value per channel, float64."""
    w = np.asarray(w)
    axis = _check_axis(w, axis)
    reduce = tuple(a for a in range(w.ndim) if a != axis)
    return np.abs(w.astype(np.float64)).max(axis=reduce) if reduce else np.abs(w.astype(np.float64))


def quantize_symmetric(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel int8: returns (q int8 shaped like w, scale float32[C]), C = w.shape[axis]."""
    w = _check_weights(w)
    axis = _check_axis(w, axis)
    scale = symmetric_scale(channel_amax(w, axis))
    return _quantize(w, _broadcast(scale, w.ndim, axis)), scale


def quantize_symmetric_per_tensor(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Per-tensor int8: returns (q int8 shaped like w, scale float32 scalar)."""
    w = _check_weights(w)
    amax = float(np.abs(w.astype(np.float64)).max()) if w.size else 0.0
    scale = symmetric_scale(amax)
    return _quantize(w, scale), np.float32(scale)


def quantize_with_scale(x: np.ndarray, scale: np.ndarray | float, axis: int | None = None) -> np.ndarray:
    """q = clip(round(x / scale), -127, 127) for a given scale (per tensor, or per channel on `axis`)."""
    x = _check_weights(x)
    scale = np.asarray(scale, dtype=np.float32)
    if axis is not None:
        scale = _broadcast(scale, x.ndim, _check_axis(x, axis))
    return _quantize(x, scale)


def dequantize(q: np.ndarray, scale: np.ndarray | float, axis: int | None = None) -> np.ndarray:
    """x = q * scale (float32); `axis` names the channel axis of a per-channel scale."""
    q = np.asarray(q)
    scale = np.asarray(scale, dtype=np.float32)
    if axis is not None:
        scale = _broadcast(scale, q.ndim, _check_axis(q, axis))
    return (q.astype(np.float32) * scale).astype(np.float32)


def _quantize(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    scaled = w.astype(np.float32) / scale
    return np.clip(np.rint(scaled), -INT8_MAX, INT8_MAX).astype(np.int8)


def _broadcast(scale: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(scale, dtype=np.float32).reshape(shape)


def _check_axis(w: np.ndarray, axis: int) -> int:
    if not -w.ndim <= axis < w.ndim:
        raise ValueError(f"axis {axis} is out of range for a weight of shape {list(w.shape)}")
    return axis % w.ndim


def _check_weights(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"weights must be floating point, got {w.dtype}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights hold NaN or Inf; the model itself is broken")
    return w
