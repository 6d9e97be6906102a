"""Calibration keeps one batch of activations and fixed-size histograms, whatever the number of
samples (the figures for MiniLM and ResNet-50 at 100/500/2,000 samples: bench/memory_bounds.py,
docs/reliability.md). Python-side allocations (numpy included) are traced here."""

from __future__ import annotations

import tracemalloc

from tests.search._chain import write_chain
from trimtab.calibrate import collect_histograms
from trimtab.load import load_model


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_calibration_memory_does_not_grow_with_the_number_of_samples(tmp_path):
    peaks = {}
    for samples in (40, 400):
        path = tmp_path / f"chain{samples}.onnx"
        data = write_chain(path, samples=samples, width=256)
        model = load_model(path)
        peaks[samples] = _peak_bytes(lambda: collect_histograms(model, data, batch_size=8))
    # Holding every batch's activations would add 400 x 11 tensors x 1 KB = 4.5 MB at 400 samples.
    assert peaks[400] < 1.25 * peaks[40], peaks
