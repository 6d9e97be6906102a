"""Quantisation arithmetic in numpy: the reference the Q/DQ builders and tests share.

    quantize(x)   = saturate(round_half_even(x / scale) + zero_point)
    dequantize(q) = (q - zero_point) * scale

Activations: uint8 asymmetric over [lo, hi] (lo <= 0 <= hi so that 0 is exact),
scale = (hi - lo) / 255, zero_point = round(-lo / scale); or int8 symmetric, scale = amax / 127,
zero_point = 0. Weights: int8 symmetric per output channel, from `trimtab.calibrate.weights`
(scale_c = max|w_c| / 127, values in [-127, 127]). Bias: int32, scale = s_input * s_weight_c,
zero point 0, as QLinearConv/QGemm define it.

fp8 (float8e4m3fn, for GPUs with fp8 tensor cores): symmetric, scale = amax / 448, zero point 0;
quantize = saturate to +-448, then round to the nearest fp8 value (what QuantizeLinear-19 does).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

FP8 = ml_dtypes.float8_e4m3fn
FP8_MAX = 448.0
_MIN_SCALE = 1e-12  # a constant-zero tensor still needs a positive scale


@dataclass(frozen=True)
class QParams:
    """Per-tensor activation quantisation: scale, zero point and the integer type."""

    scale: float
    zero_point: int
    dtype: type  # np.uint8, np.int8 or FP8

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be positive and finite, got {self.scale}")
        if self.dtype is FP8:
            if self.zero_point != 0:
                raise ValueError("fp8 zero points are 0")
            return
        info = np.iinfo(self.dtype)
        if not info.min <= self.zero_point <= info.max:
            raise ValueError(f"zero point {self.zero_point} outside {self.dtype.__name__}")


def asymmetric_uint8(lo: float, hi: float) -> QParams:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255.0, _MIN_SCALE)
    zero_point = int(np.clip(np.round(-lo / scale), 0, 255))
    return QParams(scale, zero_point, np.uint8)


def symmetric_int8(amax: float) -> QParams:
    return QParams(max(float(amax) / 127.0, _MIN_SCALE), 0, np.int8)


def symmetric_fp8(amax: float) -> QParams:
    return QParams(max(float(amax) / FP8_MAX, _MIN_SCALE), 0, FP8)


def quantize_fp8(x: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """x / scale saturated to +-448 and rounded to float8e4m3fn (`scale` broadcasts against x)."""
    return np.clip(np.asarray(x, np.float32) / np.asarray(scale, np.float32), -FP8_MAX, FP8_MAX).astype(FP8)


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale input_scale * weight_scale per channel: returns (values, scales)."""
    scales = (np.float32(input_scale) * weight_scales.astype(np.float32)).astype(np.float32)
    scales = np.maximum(scales, np.float32(_MIN_SCALE))
    info = np.iinfo(np.int32)
    values = np.clip(np.round(bias.astype(np.float64) / scales), info.min, info.max).astype(np.int32)
    return values, scales


def fake_quantize(x: np.ndarray, params: QParams) -> np.ndarray:
    """Quantise then dequantise, as a Q -> DQ pair computes it."""
    if params.dtype is FP8:
        return (quantize_fp8(x, params.scale).astype(np.float32) * np.float32(params.scale)).astype(np.float32)
    info = np.iinfo(params.dtype)
    q = np.clip(np.round(x / params.scale) + params.zero_point, info.min, info.max)
    return ((q - params.zero_point) * params.scale).astype(np.float32)
