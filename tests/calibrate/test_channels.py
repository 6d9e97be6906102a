"""The optional per-channel statistic of MatMul/Gemm inputs (for smoothing) and float_tensors."""

from __future__ import annotations

import numpy as np
import pytest

from trimtab.calibrate import ChannelRange, HistogramSet, matmul_inputs
from trimtab.calibrate.cache import (
    HISTOGRAMS_FILE,
    Calibration,
    cache_folder,
    calibrate,
)
from trimtab.calibrate.collect import collect_histograms

from .conftest import StandInDataset, make_model, masked_attention
from .test_collect import _all_at_once


def test_channel_range_streams_to_the_one_pass_min_max_and_skips_sentinels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7, 6)).astype(np.float32)
    x[2, 3, 4] = -3.4e38  # a sentinel never becomes a channel's minimum
    streamed = ChannelRange("t", 6)
    for batch in np.array_split(x, 3):
        streamed.update(batch)
    rows = x.reshape(-1, 6)
    keep = np.abs(rows) < 1e30
    expected_min = np.array([rows[keep[:, c], c].min() for c in range(6)])
    np.testing.assert_array_equal(streamed.min, expected_min)
    np.testing.assert_array_equal(streamed.max, rows.max(axis=0))
    np.testing.assert_array_equal(streamed.amax, np.maximum(-expected_min, rows.max(axis=0)))
    with pytest.raises(ValueError):
        streamed.update(np.zeros((2, 5), np.float32))  # another channel count


def test_collector_records_matmul_inputs_per_channel(cnn_model, image_data):
    assert matmul_inputs(cnn_model.proto) == ["flat"]
    hist_set = collect_histograms(cnn_model, image_data, batch_size=4)
    assert list(hist_set.channels) == ["flat"] and hist_set.meta["channel_stats"] is True
    flat = _all_at_once(cnn_model, image_data.arrays, ["flat"])["flat"]
    np.testing.assert_array_equal(hist_set.channels["flat"].min, flat.min(axis=0))
    np.testing.assert_array_equal(hist_set.channels["flat"].max, flat.max(axis=0))
    assert collect_histograms(cnn_model, image_data, channel_stats=False).channels == {}


def test_channels_survive_save_load_and_the_calibration_json(cnn_model, image_data, tmp_path):
    hist_set = collect_histograms(cnn_model, image_data, batch_size=4)
    hist_set.save(tmp_path / "h.npz")
    loaded = HistogramSet.load(tmp_path / "h.npz")
    np.testing.assert_array_equal(loaded.channels["flat"].max, hist_set.channels["flat"].max)
    calibration = calibrate(cnn_model, image_data, "minmax", cache_dir=tmp_path)
    again = Calibration.from_json(calibration.to_json())
    np.testing.assert_array_equal(again.channels["flat"].min, hist_set.channels["flat"].min)


def test_cached_histograms_without_channels_are_recollected(cnn_model, image_data, tmp_path):
    folder = cache_folder(tmp_path, cnn_model.sha256, image_data.fingerprint())
    old = collect_histograms(cnn_model, image_data, channel_stats=False)
    old.meta["data_fingerprint"] = image_data.fingerprint()
    del old.meta["channel_stats"]  # as files written before the statistic existed
    old.save(folder / HISTOGRAMS_FILE)
    calibration = calibrate(cnn_model, image_data, "minmax", cache_dir=tmp_path)
    assert not calibration.from_cache and "flat" in calibration.channels
    assert calibrate(cnn_model, image_data, "mse", cache_dir=tmp_path).from_cache


def test_float_tensors_name_every_tensor_a_sentinel_reached(tmp_path):
    model = make_model(masked_attention(), "attn")
    ids = np.random.default_rng(0).integers(0, 11, (6, 5)).astype(np.int64)
    mask = np.ones((6, 5), np.int64)
    mask[::2, -1] = 0  # little padding: the masked scores are not sentinel-dominated
    calibration = calibrate(model, StandInDataset({"ids": ids, "mask": mask}, "text"), "minmax", cache_dir=tmp_path)
    assert "masked" not in calibration.dominated_tensors
    assert {"neg", "neg3", "masked"} <= calibration.float_tensors
    assert not calibration.float_tensors & {"emb", "scores", "probs", "out"}
