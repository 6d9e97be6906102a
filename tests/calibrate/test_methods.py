"""Calibration methods on synthetic distributions whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from trimtab.calibrate.histogram import HistogramSet, TensorHistogram
from trimtab.calibrate.methods import (
    compute_ranges,
    entropy_amax,
    minmax_amax,
    mse_amax,
    percentile_amax,
)
from trimtab.options import CalibrationMethod

# Phi^-1(0.99995) and Phi^-1(0.9999): the 99.99th percentile of |N(0,1)| and of ReLU(N(0,1)).
GAUSS_ABS_P9999 = 3.8906
RELU_P9999 = 3.7190


def _hist(x: np.ndarray) -> TensorHistogram:
    hist = TensorHistogram("t")
    hist.update(x.astype(np.float32))
    return hist


@pytest.fixture(scope="module")
def gauss_outliers():
    x = np.random.default_rng(0).standard_normal(1_000_000)
    x[:2] = [100.0, -100.0]
    return x


@pytest.fixture(scope="module")
def relu():
    return np.maximum(np.random.default_rng(1).standard_normal(1_000_000), 0.0)


def _empirical_mse(x: np.ndarray, amax: float) -> float:
    """Reference: quantize the samples themselves, symmetric int8."""
    scale = amax / 127
    q = np.clip(np.round(x / scale), -127, 127)
    return float(np.mean((x - q * scale) ** 2))


def test_outliers_are_clipped_by_all_but_minmax(gauss_outliers):
    hist = _hist(gauss_outliers)
    assert minmax_amax(hist) == 100.0
    assert abs(percentile_amax(hist) - GAUSS_ABS_P9999) < 0.1
    assert 3.0 < entropy_amax(hist) < 10.0
    # expected MSE trades the two outliers' clipping error against everyone's rounding error:
    # d/dT [N (T/127)^2 / 12 + 2 (100 - T)^2] = 0  ->  T = 28.0 for N = 1e6
    assert abs(mse_amax(hist) - 28.0) < 1.5


def test_uniform_keeps_nearly_the_whole_range():
    x = np.random.default_rng(2).uniform(-1, 1, 500_000).astype(np.float32)
    hist = _hist(x)
    top = float(np.abs(x).max())
    for fn in (minmax_amax, entropy_amax, percentile_amax, mse_amax):
        assert 0.98 * top <= fn(hist) <= top, fn.__name__


def test_half_normal_after_relu(relu):
    hist = _hist(relu)
    assert hist.min == 0.0
    assert minmax_amax(hist) == pytest.approx(relu.max())
    assert abs(percentile_amax(hist) - RELU_P9999) < 0.1
    # bin 0 (the spike of exact zeros) is levelled to bin 1 first, so the KL search does not
    # clip the ReLU output hard (without it: ~2.06)
    assert 2.6 < entropy_amax(hist) < RELU_P9999 + 0.3


@pytest.mark.parametrize("name", ["gauss_outliers", "relu"])
def test_mse_matches_an_empirical_search(name, request):
    x = request.getfixturevalue(name)
    chosen = mse_amax(_hist(x))
    grid = np.linspace(1.0, float(np.abs(x).max()), 100)
    best = min(_empirical_mse(x, t) for t in grid)
    assert _empirical_mse(x, chosen) <= 1.02 * best


def _reference_entropy(counts: np.ndarray, bin_width: float, levels: int = 128) -> float:
    """NVIDIA's KL search written literally, one candidate at a time (slow, for checking)."""
    best_i, best_kl = levels, np.inf
    last = max(levels, int(np.flatnonzero(counts)[-1]) + 1)
    for i in range(levels, last + 1):
        counts = counts.astype(np.float64)
        counts[0] = counts[1]  # zero spike levelled, as in entropy_amax
        p = counts[:i].astype(np.float64)
        p[i - 1] += counts[i:].sum()
        group = (np.arange(i) * levels) // i
        sums = np.bincount(group, weights=counts[:i], minlength=levels)
        used = np.bincount(group, weights=(counts[:i] > 0).astype(float), minlength=levels)
        q = np.where(counts[:i] > 0, sums[group] / np.maximum(used[group], 1), 0.0)
        if q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        zero = q == 0
        q = np.where(zero, 1e-4, q * (1 - 1e-4 * zero.sum()))
        kl = sum(pb * np.log(pb / qb) for pb, qb in zip(p, q) if pb > 0)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i * bin_width


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_matches_literal_reference(seed):
    rng = np.random.default_rng(seed)
    x = [rng.standard_normal(50_000), rng.laplace(size=50_000), np.maximum(rng.standard_normal(50_000), 0)][seed]
    x = np.append(x, 3 * np.abs(x).max())  # one outlier: data occupies the first ~700 bins
    hist = _hist(x)
    expected = min(_reference_entropy(hist.counts, hist.bin_width), hist.amax_observed)
    assert entropy_amax(hist) == pytest.approx(expected, rel=1e-9)


def test_percentile_interpolates_inside_a_bin():
    x = np.random.default_rng(3).uniform(0, 1, 1_000_000)
    assert percentile_amax(_hist(x), 90.0) == pytest.approx(0.9, abs=2e-3)
    assert percentile_amax(_hist(x), 100.0) == pytest.approx(x.max(), rel=1e-6)
    with pytest.raises(ValueError):
        percentile_amax(_hist(x), 0.0)


def test_degenerate_tensors_give_zero_not_errors():
    zeros = _hist(np.zeros(10))
    masks = _hist(np.full(10, -3.4e38))
    for hist in (zeros, masks):
        for fn in (minmax_amax, entropy_amax, percentile_amax, mse_amax):
            assert fn(hist) == 0.0


def test_compute_ranges(gauss_outliers):
    hist_set = HistogramSet()
    hist_set.update("a", gauss_outliers.astype(np.float32))
    hist_set.update("mask", np.full(4, -3.4e38, np.float32))
    minmax = compute_ranges(hist_set, "minmax")
    assert (minmax["a"].amax, minmax["a"].min, minmax["a"].max) == (100.0, -100.0, 100.0)
    assert (minmax["mask"].amax, minmax["mask"].min, minmax["mask"].max) == (0.0, 0.0, 0.0)
    p = compute_ranges(hist_set, CalibrationMethod.PERCENTILE, percentile=99.0)["a"]
    assert abs(p.amax - 2.576) < 0.05 and p.min == -100.0  # min/max stay what was observed
    with pytest.raises(ValueError):
        compute_ranges(hist_set, "median")


@pytest.mark.parametrize("amax", [0.3, 0.7, 1.0])
def test_expected_mse_formula_matches_sampled_error(amax):
    from trimtab.calibrate.methods import _expected_sq_error

    x = np.random.default_rng(4).uniform(-1, 1, 400_000)
    hist = _hist(x)
    w = hist.bin_width
    predicted = _expected_sq_error(hist.counts.astype(float), np.array([amax / w]), 127)[0] * w**2 / hist.count
    assert predicted == pytest.approx(_empirical_mse(x, amax), rel=0.02)


@pytest.mark.parametrize("name", ["gauss_outliers", "relu"])
def test_mse_coarse_to_fine_search_finds_the_exhaustive_minimum(name, request):
    from trimtab.calibrate.methods import _expected_sq_error

    hist = _hist(request.getfixturevalue(name))
    counts = hist.counts.astype(float)
    top = int(np.flatnonzero(counts)[-1]) + 1
    everything = _expected_sq_error(counts[:top], np.arange(1.0, top + 1), 127)
    chosen = _expected_sq_error(counts[:top], np.array([mse_amax(hist) / hist.bin_width]), 127)[0]
    assert chosen <= everything.min() * (1 + 1e-3)
