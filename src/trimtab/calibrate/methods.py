"""Calibration methods: pure functions from a histogram of |x| to a clipping threshold `amax`.

Every method returns 0 <= amax <= max|x| observed (clipping beyond the data only wastes levels).
Symmetric int8 then uses scale s = amax / 127 and q = clip(round(x / s), -127, 127).

Notation below: n_b = counts of bin b, w = bin width, B = number of bins (2048), N = sum_b n_b.
"""

from __future__ import annotations

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

    Bin 0 is first set to the count of bin 1, as NVIDIA's pytorch-quantization does: after a ReLU,
    exact zeros pile up in bin 0 and the search would otherwise spend its levels on that spike and
    clip the real activations hard (ReLU(N(0,1)) gave amax 2.06 instead of ~3.5).
    """
    counts = hist.counts.astype(np.float64)
    if counts.size > 1:
        counts[0] = counts[1]
    nonzero = np.flatnonzero(counts)
    if hist.range == 0.0 or nonzero.size == 0 or counts.size < levels:
        return hist.amax_observed
    candidates = np.arange(levels, max(levels, int(nonzero[-1]) + 1) + 1)
    kl = _kl_divergences(counts, candidates, levels)
    return _cap(int(candidates[int(np.argmin(kl))]) * hist.bin_width, hist)


def _kl_divergences(counts: np.ndarray, candidates: np.ndarray, levels: int) -> np.ndarray:
    """KL(P || Q) for each candidate bin count i, in O(levels) per candidate instead of O(i).

    Within group g, Q is constant over the non-zero bins: Q_b = (S_g / K_g) / C_i * f for n_b > 0,
    with S_g the group's count, K_g its non-zero bins, C_i = sum_{b<i} n_b and f = 1 - eps z_i the
    smoothing factor (z_i zero bins below i); Q_b = eps for n_b = 0. P_b = n_b / N except the last
    bin, P_{i-1} = (n_{i-1} + outliers) / N. So, with prefix sums of n and n log n,
      sum_{b<i-1} P_b log P_b = (sum_{b<i-1} n_b log n_b - C_{i-1} log N) / N
      sum_{b<i-1} P_b log Q_b = (sum_g S_g log(S_g / K_g) - n_{i-1} log(S_last / K_last)) / N
                                + C_{i-1} / N * (log f - log C_i)
    plus the last bin's term P_{i-1} log(P_{i-1} / Q_{i-1}). Equal to the literal definition
    (checked by a test against a bin-by-bin implementation).
    """
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    cumulative_nonzero = np.concatenate([[0.0], np.cumsum(counts > 0)])
    plogp = np.concatenate([[0.0], np.cumsum(counts * np.log(np.where(counts > 0, counts, 1.0)))])
    total = cumulative[-1]
    i = candidates
    starts = (np.arange(levels + 1)[None, :] * i[:, None] + levels - 1) // levels
    group_sum = np.diff(cumulative[starts], axis=1)
    group_nonzero = np.diff(cumulative_nonzero[starts], axis=1)
    mean = np.divide(group_sum, group_nonzero, out=np.ones_like(group_sum), where=group_sum > 0)
    spread = (group_sum * np.log(mean)).sum(axis=1)
    inside, before_last, last = cumulative[i], cumulative[i - 1], counts[i - 1]
    log_inside = np.log(np.where(inside > 0, inside, 1.0))
    factor = 1.0 - ENTROPY_SMOOTHING * (i - cumulative_nonzero[i])
    log_last_mean = np.log(mean[:, -1])
    p_log_p = (plogp[i - 1] - before_last * np.log(total)) / total
    p_log_q = (spread - last * log_last_mean) / total + before_last / total * (np.log(factor) - log_inside)
    p_last = (last + total - inside) / total
    log_q_last = np.where(last > 0, log_last_mean - log_inside + np.log(factor), np.log(ENTROPY_SMOOTHING))
    last_term = np.where(p_last > 0, p_last * (np.log(np.where(p_last > 0, p_last, 1.0)) - log_q_last), 0.0)
    kl = p_log_p - p_log_q + last_term
    return np.where(inside > 0, kl, np.inf)


def mse_amax(hist: TensorHistogram, levels: int = INT8_LEVELS, stride: int = 16) -> float:
    """amax minimising the expected squared error of symmetric int8 quantization over the histogram.

    For threshold T (candidates: bin edges k w, k = 1..B) and step s = T / 127, with values
    taken as uniform inside each bin [a_b, e_b):
      rounding, |x| <= T:  e(x) = x - s round(x / s); its integral from -s/2 to x is
          G(x) = m s^3 / 12 + (u^3 + s^3 / 8) / 3,  m = round(x / s), u = x - m s
      clipping, |x| > T:   the integral of (x - T)^2 from T to x is H(x) = max(x - T, 0)^3 / 3
      F(x) = G(min(x, T)) + H(x),   MSE(T) = (1 / N w) sum_b n_b [F(e_b) - F(a_b)]
    Search: every `stride`-th edge first, then every edge within `stride` of the best (MSE(T) is
    smooth at this scale: each bin's error is averaged over the bin). Ties go to the smaller T.
    Computed in units of w (scale-free).
    """
    counts = hist.counts.astype(np.float64)
    nonzero = np.flatnonzero(counts)
    if hist.range == 0.0 or nonzero.size == 0:
        return hist.amax_observed
    top = int(nonzero[-1]) + 1
    coarse = np.unique(np.append(np.arange(stride, top + 1, stride), top)).astype(np.float64)
    best = coarse[int(np.argmin(_expected_sq_error(counts[:top], coarse, levels)))]
    fine = np.arange(max(1.0, best - stride), min(float(top), best + stride) + 1.0)
    best = fine[int(np.argmin(_expected_sq_error(counts[:top], fine, levels)))]
    return _cap(best * hist.bin_width, hist)


def _expected_sq_error(counts: np.ndarray, thresholds: np.ndarray, levels: int) -> np.ndarray:
    """N w MSE(T) for each threshold, in units of w (see mse_amax): F is evaluated once per bin
    edge (bin b spans edges b and b + 1), then sum_b n_b [F(b + 1) - F(b)] is a matrix-vector product."""
    edges = np.arange(counts.size + 1, dtype=np.float64)[None, :]
    t = thresholds[:, None]
    s = t / levels
    x = np.minimum(edges, t)
    m = np.round(x / s)
    u = x - m * s
    f = m * s**3 / 12.0 + (u**3 + s**3 / 8.0) / 3.0 + np.maximum(edges - t, 0.0) ** 3 / 3.0
    return np.diff(f, axis=1) @ counts


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
