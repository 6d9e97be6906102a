"""Calibration methods: pure functions from a histogram of |x| to a clipping threshold `amax`.

Every method returns 0 <= amax <= max|x| observed (clipping beyond the data only wastes levels).
Symmetric int8 then uses scale s = amax / 127 and q = clip(round(x / s), -127, 127).

Notation below: n_b = counts of bin b, w = bin width, B = number of bins (2048), N = sum_b n_b.
"""

from __future__ import annotations

import math

import numpy as np

from trimtab.calibrate.histogram import HistogramSet, TensorHistogram
from trimtab.calibrate.ranges import TensorRange
from trimtab.options import CalibrationMethod

INT8_LEVELS = 127  # symmetric int8: -127..127 (TensorRT never uses -128)
ENTROPY_LEVELS = 128  # quantized levels of |x| in NVIDIA's KL search
ENTROPY_SMOOTHING = 1e-4
DEFAULT_PERCENTILE = 99.99


def minmax_amax(hist: TensorHistogram) -> float:
    """amax = max |x| over every value seen: nothing is clipped, resolution is spent on outliers."""
    return hist.amax_observed


def percentile_amax(hist: TensorHistogram, percentile: float = DEFAULT_PERCENTILE) -> float:
    """amax = the `percentile`-th percentile of |x|.

    With cumulative counts C_k = sum_{b<=k} n_b and target t = N * percentile / 100, the first
    bin k with C_k >= t holds the answer; interpolate linearly inside it:
        amax = w * (k + (t - C_{k-1}) / n_k).
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    total = int(hist.counts.sum())
    if total == 0 or hist.range == 0.0:
        return 0.0
    if percentile == 100.0:
        return hist.amax_observed
    cumulative = np.cumsum(hist.counts)
    target = total * percentile / 100.0
    k = int(np.searchsorted(cumulative, target, side="left"))
    before = float(cumulative[k - 1]) if k else 0.0
    amax = hist.bin_width * (k + (target - before) / float(hist.counts[k]))
    return _cap(amax, hist)


def entropy_amax(hist: TensorHistogram, levels: int = ENTROPY_LEVELS) -> float:
    """amax minimising KL(P || Q), NVIDIA's method for TensorRT's EntropyCalibrator2
    (Migacz, "8-bit Inference with TensorRT", GTC 2017).

    For each candidate i = 128 .. B (threshold = i * w, the upper edge of bin i-1):
      P = n_0 .. n_{i-1}, with the outliers sum_{b>=i} n_b added to P_{i-1}; P /= sum P.
      Q: split n_0 .. n_{i-1} into 128 contiguous groups (bin b in group floor(128 b / i)),
         spread each group's sum evenly over its non-zero bins (zero bins stay 0); Q /= sum Q.
      Smooth Q: zero bins get eps = 1e-4 and the others are scaled by (1 - eps * #zeros)
         so that sum Q = 1 and P_b > 0 = Q_b (clipping into an empty bin) costs a large,
         finite penalty instead of infinity.
      KL(P || Q) = sum_{P_b > 0} P_b log(P_b / Q_b).
    Candidates stop at the last non-zero bin + 1 (wider thresholds clip nothing). The minimum wins;
    ties go to the smaller threshold.
    """
    counts = hist.counts.astype(np.float64)
    nonzero = np.flatnonzero(counts)
    if hist.range == 0.0 or nonzero.size == 0 or counts.size < levels:
        return hist.amax_observed
    last = max(levels, int(nonzero[-1]) + 1)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    cumulative_nonzero = np.concatenate([[0], np.cumsum(counts > 0)])
    best_i, best_kl = levels, math.inf
    for i in range(levels, last + 1):
        kl = _kl_for_candidate(counts, cumulative, cumulative_nonzero, i, levels)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return _cap(best_i * hist.bin_width, hist)


def _kl_for_candidate(
    counts: np.ndarray, cumulative: np.ndarray, cumulative_nonzero: np.ndarray, i: int, levels: int
) -> float:
    """KL(P || Q) for threshold bin count i (see entropy_amax); group sums come from prefix sums."""
    inside = cumulative[i]
    if inside == 0.0:
        return math.inf
    # group j holds bins ceil(j i / levels) .. ceil((j+1) i / levels) - 1
    starts = (np.arange(levels + 1) * i + levels - 1) // levels
    group_sum = np.diff(cumulative[starts])
    group_nonzero = np.diff(cumulative_nonzero[starts])
    per_bin = np.divide(group_sum, group_nonzero, out=np.zeros(levels), where=group_nonzero > 0)
    q = np.repeat(per_bin, np.diff(starts)) * (counts[:i] > 0)
    q /= inside
    p = counts[:i].copy()
    p[-1] += cumulative[-1] - inside
    p /= cumulative[-1]
    zero = q == 0.0
    n_zero = int(np.count_nonzero(zero))
    if n_zero:
        q *= 1.0 - ENTROPY_SMOOTHING * n_zero
        q[zero] = ENTROPY_SMOOTHING
    mask = p > 0.0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def mse_amax(hist: TensorHistogram, levels: int = INT8_LEVELS, chunk: int = 128) -> float:
    """amax minimising the expected squared error of symmetric int8 quantization over the histogram.

    For threshold T (candidates: every bin edge k w, k = 1..B) and step s = T / 127, with values
    taken as uniform inside each bin [a_b, e_b):
      rounding, |x| <= T:  e(x) = x - s round(x / s); its integral from -s/2 to x is
          G(x) = m s^3 / 12 + (u^3 + s^3 / 8) / 3,  m = round(x / s), u = x - m s
      clipping, |x| > T:   integral of (x - T)^2 = ((e - T)^3 - (a - T)^3) / 3
      MSE(T) = (1/N) sum_b (n_b / w) [G(min(e_b, T)) - G(min(a_b, T)) + clip part over [max(a_b, T), e_b)]
    The minimum wins (ties to the smaller T). Computed in units of w (scale-free).
    """
    counts = hist.counts.astype(np.float64)
    nonzero = np.flatnonzero(counts)
    if hist.range == 0.0 or nonzero.size == 0:
        return hist.amax_observed
    n = counts[nonzero]
    lo, hi = nonzero.astype(np.float64), nonzero + 1.0
    candidates = np.arange(1, int(nonzero[-1]) + 2, dtype=np.float64)
    errors = np.concatenate(
        [_expected_sq_error(lo, hi, n, candidates[j : j + chunk], levels) for j in range(0, candidates.size, chunk)]
    )
    best = candidates[int(np.argmin(errors))]
    return _cap(best * hist.bin_width, hist)


def _expected_sq_error(lo: np.ndarray, hi: np.ndarray, n: np.ndarray, thresholds: np.ndarray, levels: int) -> np.ndarray:
    """Sum over bins of n_b times the mean squared error in bin b, for each threshold (rows)."""
    t = thresholds[:, None]
    s = t / levels

    def rounding_integral(x: np.ndarray) -> np.ndarray:
        m = np.round(x / s)
        u = x - m * s
        return m * s**3 / 12.0 + (u**3 + s**3 / 8.0) / 3.0

    inside = rounding_integral(np.minimum(hi, t)) - rounding_integral(np.minimum(lo, t))
    clip_lo = np.maximum(lo, t)
    clipped = np.where(hi > t, ((hi - t) ** 3 - (clip_lo - t) ** 3) / 3.0, 0.0)
    return ((inside + clipped) * n).sum(axis=1)  # bin width is 1 in these units


def _cap(amax: float, hist: TensorHistogram) -> float:
    return float(min(max(amax, 0.0), hist.amax_observed))


def amax_for(hist: TensorHistogram, method: CalibrationMethod | str, percentile: float = DEFAULT_PERCENTILE) -> float:
    """Dispatch to the method named by `method` (a CalibrationMethod value)."""
    method = CalibrationMethod(method)
    if method is CalibrationMethod.MINMAX:
        return minmax_amax(hist)
    if method is CalibrationMethod.ENTROPY:
        return entropy_amax(hist)
    if method is CalibrationMethod.PERCENTILE:
        return percentile_amax(hist, percentile)
    return mse_amax(hist)


def compute_ranges(
    hist_set: HistogramSet, method: CalibrationMethod | str, percentile: float = DEFAULT_PERCENTILE
) -> dict[str, TensorRange]:
    """One TensorRange per histogram: amax from `method`, min/max as observed (0 when the
    tensor held only sentinels)."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    ranges = {}
    for hist in hist_set.values():
        lo, hi = (hist.min, hist.max) if hist.count else (0.0, 0.0)
        ranges[hist.name] = TensorRange(amax=amax_for(hist, method, percentile), min=lo, max=hi)
    return ranges
