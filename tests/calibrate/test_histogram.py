"""Streaming histograms: range growth without losing counts, sentinels, NaN, npz round trip."""

from __future__ import annotations

import numpy as np
import pytest

from trimtab.calibrate.histogram import DEFAULT_BINS, HistogramSet, TensorHistogram
from trimtab.errors import CalibrationError


def _direct_counts(values: np.ndarray, value_range: float, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Reference: one histogram of all values at once over [0, value_range]."""
    index = np.minimum((np.abs(values).astype(np.float64) / value_range * bins).astype(np.int64), bins - 1)
    return np.bincount(index, minlength=bins)


def test_range_growth_keeps_every_count_and_matches_one_pass():
    rng = np.random.default_rng(0)
    batches = [
        rng.uniform(-1, 1, 5000).astype(np.float32),
        np.append(rng.standard_normal(5000), 10.0).astype(np.float32),
        np.append(rng.standard_normal(5000), -1000.0).astype(np.float32),
        rng.uniform(-0.5, 0.5, 5000).astype(np.float32),
    ]
    streamed = TensorHistogram("t")
    ranges = []
    for batch in batches:
        streamed.update(batch)
        ranges.append(streamed.range)
    everything = np.concatenate(batches)
    one_pass = TensorHistogram("t")
    one_pass.update(everything)

    assert streamed.counts.sum() == streamed.count == everything.size
    assert (streamed.min, streamed.max) == (one_pass.min, one_pass.max) == (everything.min(), everything.max())
    assert streamed.amax_observed == one_pass.amax_observed == 1000.0
    first = ranges[0]
    assert ranges == sorted(ranges) and ranges[-1] >= 1000.0
    assert np.log2(ranges[-1] / first) == int(np.log2(ranges[-1] / first))  # grew by doubling
    # merged bins line up with a direct histogram over the final range (edge rounding aside)
    mismatch = np.abs(streamed.counts - _direct_counts(everything, streamed.range)).sum()
    assert mismatch <= 4


def test_zero_batch_then_data():
    hist = TensorHistogram("t")
    hist.update(np.zeros(100, np.float32))
    assert hist.range == 0.0 and hist.counts[0] == 100
    hist.update(np.array([0.5, -2.0], np.float32))
    assert hist.range == 2.0 and hist.counts[0] == 100 and hist.counts.sum() == 102


def test_sentinels_are_counted_apart():
    x = np.array([[0.5, -1.0, -3.4e38, 2.0], [-3.4e38, 0.0, 1.0, -0.25]], np.float32)
    hist = TensorHistogram("mask_add")
    hist.update(x)
    assert hist.sentinel_count == 2
    assert hist.count == 6 and hist.counts.sum() == 6
    assert (hist.min, hist.max, hist.range) == (-1.0, 2.0, 2.0)
    assert not hist.dominated_by_sentinels

    mask = TensorHistogram("mask")
    mask.update(np.array([-3.4e38, -3.4e38, -3.4e38, 0.0], np.float32))
    assert mask.dominated_by_sentinels and mask.sentinel_fraction == 0.75

    only = TensorHistogram("only")
    only.update(np.full(4, -3.4e38, np.float32))
    assert only.count == 0 and only.range == 0.0 and only.amax_observed == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raises_naming_tensor_and_samples(bad):
    hist_set = HistogramSet()
    x = np.ones((2, 3), np.float32)
    x[1, 2] = bad
    with pytest.raises(CalibrationError) as info:
        hist_set.update("/block/Add_output_0", x, ["cat.jpg", "dog.jpg"])
    text = str(info.value)
    assert "/block/Add_output_0" in text and "cat.jpg" in text and "dog.jpg" in text
    assert info.value.hint


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    hist_set = HistogramSet(meta={"model_sha256": "ab" * 32, "num_samples": 3})
    hist_set.update("a", rng.standard_normal(1000).astype(np.float32))
    hist_set.update("ünï::b", np.array([1.0, -3.4e38], np.float32))
    hist_set.update("zeros", np.zeros(5, np.float32))
    path = hist_set.save(tmp_path / "h.npz")
    with np.load(path, allow_pickle=False) as data:  # plain arrays, no pickle needed
        assert set(data.files) >= {"names", "counts"}
    back = HistogramSet.load(path)
    assert back.names == hist_set.names and back.meta == hist_set.meta
    for name in hist_set:
        a, b = hist_set[name], back[name]
        assert np.array_equal(a.counts, b.counts)
        assert (a.range, a.min, a.max, a.count, a.sentinel_count) == (b.range, b.min, b.max, b.count, b.sentinel_count)


def test_unreadable_file_raises_calibration_error(tmp_path):
    path = tmp_path / "h.npz"
    path.write_bytes(b"not an npz")
    with pytest.raises(CalibrationError, match="h.npz"):
        HistogramSet.load(path)


def test_memory_does_not_grow_with_samples():
    hist = TensorHistogram("t")
    for seed in range(20):
        hist.update(np.random.default_rng(seed).standard_normal(1000).astype(np.float32))
    assert hist.counts.shape == (DEFAULT_BINS,) and hist.count == 20_000
