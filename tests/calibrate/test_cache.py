"""The calibration cache: one data pass per (model, data), any method after; stale files refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from trimtab.calibrate.cache import HISTOGRAMS_FILE, Calibration, cache_folder, calibrate
from trimtab.errors import CalibrationError

from .conftest import StandInDataset, conv_relu_matmul, make_model


def test_warm_cache_makes_no_data_pass(cnn_model, image_data, tmp_path):
    first = calibrate(cnn_model, image_data, "minmax", cache_dir=tmp_path, batch_size=4)
    assert image_data.passes == 1 and image_data.batches_yielded == 3 and not first.from_cache
    results = {m: calibrate(cnn_model, image_data, m, cache_dir=tmp_path) for m in ("entropy", "percentile", "mse")}
    again = calibrate(cnn_model, image_data, "minmax", cache_dir=tmp_path)
    assert image_data.passes == 1 and image_data.batches_yielded == 3
    assert all(r.from_cache for r in results.values()) and again.from_cache
    assert again.ranges == first.ranges
    assert set(first.ranges) == {"x", "conv", "relu", "flat", "mm", "y"}
    assert first.num_samples == 10 and first.model_sha256 == cnn_model.sha256
    for name, rng in results["percentile"].ranges.items():
        assert rng.amax <= first.ranges[name].amax
    assert results["percentile"].percentile == 99.99 and first.percentile is None


def test_another_model_or_data_never_uses_the_cache(cnn_model, image_data, tmp_path):
    calibrate(cnn_model, image_data, "minmax", cache_dir=tmp_path)
    other_model = make_model(conv_relu_matmul(seed=7), "other")
    other = calibrate(other_model, image_data, "minmax", cache_dir=tmp_path)
    assert image_data.passes == 2 and not other.from_cache
    shifted = StandInDataset({"x": image_data.arrays["x"] + 1.0}, "img2")
    calibrate(cnn_model, shifted, "minmax", cache_dir=tmp_path)
    assert shifted.passes == 1


def test_a_file_claiming_another_key_is_refused(cnn_model, image_data, tmp_path):
    calibrate(cnn_model, image_data, "minmax", cache_dir=tmp_path)
    other_model = make_model(conv_relu_matmul(seed=7), "other")
    source = cache_folder(tmp_path, cnn_model.sha256, image_data.fingerprint())
    target = cache_folder(tmp_path, other_model.sha256, image_data.fingerprint())
    shutil.copytree(source, target)  # e.g. a copied or hand-edited cache folder
    with pytest.raises(CalibrationError) as info:
        calibrate(other_model, image_data, "entropy", cache_dir=tmp_path)
    assert HISTOGRAMS_FILE in str(info.value) and "delete" in info.value.hint
    assert image_data.passes == 1


def test_tampered_ranges_file_is_refused(cnn_model, image_data, tmp_path):
    calibrate(cnn_model, image_data, "mse", cache_dir=tmp_path)
    path = cache_folder(tmp_path, cnn_model.sha256, image_data.fingerprint()) / "ranges-mse.json"
    data = json.loads(path.read_text())
    data["data_fingerprint"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="ranges-mse.json"):
        calibrate(cnn_model, image_data, "mse", cache_dir=tmp_path)
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="ranges-mse.json"):
        calibrate(cnn_model, image_data, "mse", cache_dir=tmp_path)


def test_corrupt_histograms_are_refused(cnn_model, image_data, tmp_path):
    calibrate(cnn_model, image_data, "minmax", cache_dir=tmp_path)
    path = cache_folder(tmp_path, cnn_model.sha256, image_data.fingerprint()) / HISTOGRAMS_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CalibrationError, match=HISTOGRAMS_FILE):
        calibrate(cnn_model, image_data, "minmax", cache_dir=tmp_path)


def test_calibration_json_round_trip_and_clipping(cnn_model, image_data, tmp_path):
    result = calibrate(cnn_model, image_data, "percentile", cache_dir=tmp_path, percentile=90.0)
    back = Calibration.load(result.save(tmp_path / "cal.json"))
    assert back.ranges == result.ranges and back.method == "percentile" and back.percentile == 90.0
    assert all(0.0 < f <= 0.11 for f in result.clipped.values())  # ~10% above the 90th percentile
    minmax = calibrate(cnn_model, image_data, "minmax", cache_dir=tmp_path)
    assert all(f == 0.0 for f in minmax.clipped.values())


def test_default_cache_dir_is_under_trimtab_cache(cnn_model, image_data, isolated_cache):
    calibrate(cnn_model, image_data, "minmax")
    folder = cache_folder(None, cnn_model.sha256, image_data.fingerprint())
    assert str(folder).startswith(str(isolated_cache)) and (folder / HISTOGRAMS_FILE).exists()
    assert np.isfinite([r.amax for r in calibrate(cnn_model, image_data, "entropy").ranges.values()]).all()
