"""Calibration diagnostics: the methods' ranges, clipping, badness ranking, JSON, PNG plots."""

from __future__ import annotations

import json
import logging
import re
import sys

import numpy as np
import pytest

from trimtab.calibrate.cache import clipped_fraction
from trimtab.calibrate.histogram import HistogramSet, TensorHistogram
from trimtab.explain.diagnostics import (
    CalibrationDiagnostics,
    calibration_diagnostics,
    dead_share,
    fraction_above,
    plot_worst_histograms,
    slug,
)

HOSTILE = "../../<script>alert(1)</script>"


def _histograms() -> HistogramSet:
    """A Gaussian with 20 planted outliers at 60 (under a hostile name), a plain Gaussian, a ReLU."""
    rng = np.random.default_rng(0)
    hist_set = HistogramSet(meta={"model_sha256": "m" * 64, "data_fingerprint": "d" * 64, "num_samples": 50})
    outliers = rng.standard_normal(200_000).astype(np.float32)
    outliers[:20] = 60.0
    hist_set.update("plain", rng.standard_normal(200_000).astype(np.float32))
    hist_set.update(HOSTILE, outliers)
    hist_set.update("relu", np.maximum(rng.standard_normal(200_000), 0).astype(np.float32))
    return hist_set


@pytest.fixture(scope="module")
def hist_set() -> HistogramSet:
    return _histograms()


@pytest.fixture(scope="module")
def diag(hist_set) -> CalibrationDiagnostics:
    return calibration_diagnostics(hist_set)


def test_methods_differ_on_outliers_and_minmax_clips_nothing(diag):
    tensor = diag[HOSTILE]
    assert tensor.amax["minmax"] == pytest.approx(60.0)
    assert tensor.clipped["minmax"] == 0.0
    # percentile and entropy ignore the 0.01% of outliers: they pick ~4, a 15x smaller range ...
    assert tensor.amax["percentile"] < 6.0 and tensor.amax["entropy"] < 6.0
    assert tensor.clipped["percentile"] == pytest.approx(1e-4, rel=0.2)
    assert tensor.clipped["entropy"] >= 1e-4
    assert tensor.spread_bits > 3.0
    # ... and at minmax's scale (step 60 / 127) a sixth of the Gaussian rounds to zero.
    assert 0.1 < tensor.dead["minmax"] < 0.25 and tensor.dead["percentile"] < 0.02


def test_badness_ranks_the_outlier_tensor_first(diag):
    assert [t.name for t in diag.worst(1)] == [HOSTILE]
    assert diag[HOSTILE].badness > 3 * max(diag["plain"].badness, diag["relu"].badness)
    assert [t.name for t in diag.tensors] == ["plain", HOSTILE, "relu"]  # graph order kept
    assert diag.num_samples == 50 and diag.model_sha256 == "m" * 64


def test_clipped_matches_calibration_cache(hist_set, diag):
    for tensor in diag.tensors:
        for method, amax in tensor.amax.items():
            assert tensor.clipped[method] == clipped_fraction(hist_set[tensor.name], amax)


def test_fraction_above_and_dead_share_reference():
    """Against the exact fractions of the raw values (bins are fine enough for 1e-3)."""
    rng = np.random.default_rng(3)
    values = rng.standard_normal(100_000).astype(np.float32)
    hist = TensorHistogram("x")
    hist.update(values)
    for threshold in (0.1, 1.0, 2.5):
        assert fraction_above(hist, threshold) == pytest.approx(np.mean(np.abs(values) > threshold), abs=1e-3)
    assert fraction_above(hist, hist.amax_observed) == 0.0
    amax = 1.27  # step 0.01: |x| < 0.005 rounds to zero
    hist_wide = TensorHistogram("w", bins=65536)
    hist_wide.update(values)
    expected = np.mean(np.abs(values) < 0.005)
    assert dead_share(hist_wide, amax) == pytest.approx(expected, abs=1e-3)


def test_sentinel_only_tensor_is_skipped():
    hist_set = HistogramSet()
    hist_set.update("mask", np.full(10, -3.4e38, np.float32))
    hist_set.update("x", np.linspace(-1, 1, 11, dtype=np.float32))
    diag = calibration_diagnostics(hist_set, methods=["minmax", "percentile"])
    assert diag.skipped == ["mask"] and [t.name for t in diag.tensors] == ["x"]
    assert set(diag.tensors[0].amax) == {"minmax", "percentile"}


def test_json_round_trip(diag, tmp_path):
    path = diag.save(tmp_path / "sub" / "calibration.json")
    data = json.loads(path.read_text())
    assert data["kind"] == "calibration-diagnostics" and len(data["tensors"]) == 3
    assert CalibrationDiagnostics.load(path) == diag
    assert CalibrationDiagnostics.from_dict(diag.to_dict()) == diag
    with pytest.raises(ValueError, match="format"):
        CalibrationDiagnostics.from_dict({**data, "format_version": 99})


def test_plots_are_pngs_with_sanitised_names(diag, hist_set, tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "plots"
    paths = plot_worst_histograms(diag, hist_set, folder, n=2)
    assert [p.name for p in paths] == ["01-script-alert-1-script.png", paths[1].name]
    assert len(paths) == 2 and sorted(folder.iterdir()) == sorted(paths)  # nothing written elsewhere
    for path in paths:
        assert re.fullmatch(r"\d\d-[a-z0-9-]+\.png", path.name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "script").exists()


def test_slug():
    assert slug(HOSTILE) == "script-alert-1-script"
    assert slug("/features.3/Conv_output_0") == "features-3-conv-output-0"
    assert slug("$$$") == "tensor"
    assert len(slug("a" * 500)) == 40


def test_no_matplotlib_returns_empty_and_warns(diag, hist_set, tmp_path, monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with caplog.at_level(logging.WARNING, logger="trimtab.explain.diagnostics"):
        assert plot_worst_histograms(diag, hist_set, tmp_path / "plots") == []
    assert "matplotlib" in caplog.text
    assert not (tmp_path / "plots").exists()
