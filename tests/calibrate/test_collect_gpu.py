"""Calibration on the gpu engine (its CPU fallback here; the same code counts on CUDA): the same
histograms and ranges as ONNX Runtime's activations, up to float rounding."""

from __future__ import annotations

import numpy as np
import pytest

from trimtab.calibrate import collect_histograms, compute_ranges
from trimtab.errors import CalibrationError

pytest.importorskip("torch")


@pytest.fixture
def model_and_data(tmp_path):
    from tests.search._chain import write_chain
    from trimtab.load import load_model

    path = tmp_path / "chain.onnx"
    data = write_chain(path, samples=20)
    return load_model(path), data


def test_gpu_collector_gives_onnx_runtimes_histograms_and_ranges(model_and_data):
    model, data = model_and_data
    cpu = collect_histograms(model, data, batch_size=6)
    gpu = collect_histograms(model, data, batch_size=6, target="gpu")
    assert gpu.meta["collector"].startswith("gpu engine") and cpu.meta["collector"] == "onnxruntime (cpu)"
    assert gpu.names == cpu.names and gpu.meta["num_samples"] == cpu.meta["num_samples"] == 20
    for name in cpu.names:
        a, b = cpu[name], gpu[name]
        assert a.count == b.count and a.range == pytest.approx(b.range, rel=1e-5)
        assert np.abs(a.counts - b.counts).sum() <= 0.001 * a.count + 2  # a value on a bin edge may move
    assert set(gpu.channels) == set(cpu.channels)
    for name, channel_range in cpu.channels.items():
        # float32 sums in another order (torch against ONNX Runtime, whatever their threads do)
        # differ by some ulps of the tensor's largest values: a small channel is held to those
        want = channel_range.amax
        np.testing.assert_allclose(gpu.channels[name].amax, want, rtol=1e-5, atol=1e-6 * float(np.max(want)))
    for method in ("minmax", "entropy", "percentile", "mse"):
        want, got = compute_ranges(cpu, method), compute_ranges(gpu, method)
        for name in want:
            assert got[name].amax == pytest.approx(want[name].amax, rel=2e-3), (method, name)


def test_gpu_collector_names_the_samples_of_a_batch_with_nan(model_and_data, monkeypatch):
    from trimtab.calibrate import collect_gpu

    model, data = model_and_data
    real = collect_gpu.fold

    def poisoned(hist_set, name, value, sources=()):
        return real(hist_set, name, value * float("nan"), sources)

    monkeypatch.setattr(collect_gpu, "fold", poisoned)
    with pytest.raises(CalibrationError, match="NaN"):
        collect_histograms(model, data, batch_size=6, target="gpu")
