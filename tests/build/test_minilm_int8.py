"""Acceptance on the real `minilm` example: our int8 (calibrate + build_int8 for ort-cpu) keeps
the sentence embeddings within cosine 0.98 of fp32, and padding does not change them.

Slow (builds the example on first use, ~30-60 s on 2 cores). Speed is measured in
bench/minilm_peers.py, not here.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

COSINE_FLOOR = 0.98


def _embed(backend, dataset, padded: bool) -> np.ndarray:
    if padded:
        return np.concatenate([backend.infer(batch.inputs)["embedding"] for batch in dataset.batches(8)])
    return np.concatenate([backend.infer({k: v[None] for k, v in sample.inputs.items()})["embedding"]
                           for sample in dataset])


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smooth"])
def test_minilm_int8_cosine_and_padding(smooth):
    from trimtab.backends.ort_cpu import OrtCpuBackend
    from trimtab.build import Smoothing, build_int8
    from trimtab.calibrate import calibrate
    from trimtab.examples import get_example
    from trimtab.load import load_model

    example, model = get_example("minilm"), load_model("example:minilm")
    calibration = calibrate(model, example.calibration_data(), "minmax")
    assert calibration.float_tensors, "the attention mask's sentinel was not seen"
    artifact = build_int8(model, calibration.ranges, "ort-cpu", skip_tensors=calibration.float_tensors,
                          smoothing=Smoothing(calibration.channels) if smooth else None)
    assert len(artifact.notes["quantized"]) == 36  # the 6 x 6 weight-bearing MatMuls, nothing else
    validation = example.validation_data()
    with OrtCpuBackend(model.proto, threads=2) as fp32, OrtCpuBackend(artifact.proto, threads=2) as int8:
        reference = _embed(fp32, validation, padded=True)
        padded, alone = _embed(int8, validation, padded=True), _embed(int8, validation, padded=False)
    cosine = _cosine(padded, reference)
    assert cosine.mean() >= (0.995 if smooth else COSINE_FLOOR), cosine.mean()
    assert _cosine(padded, alone).min() >= 1 - 1e-4  # padded and unpadded batches agree
    assert np.abs(padded - alone).max() < 1e-3
