"""evaluate() on synthetic outputs where the right answer is known, and collect_outputs on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.measure.measure_models import matmul_chain

from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.errors import InvalidDataError, InvalidModelError
from trimtab.measure import (
    ALL_OUTPUTS,
    EvalResult,
    Outputs,
    collect_outputs,
    evaluate,
    mean_cosine,
    probe_metric,
)


def _outputs(values, labels=None, name="", extra=None):
    arrays = {"y": np.asarray(values, dtype=np.float32)} | (extra or {})
    return Outputs(arrays, "y", None if labels is None else np.asarray(labels), name)


def _logits_predicting(predictions, n_classes=10):
    logits = np.zeros((len(predictions), n_classes), dtype=np.float32)
    logits[np.arange(len(predictions)), predictions] = 5.0
    return logits


def test_identical_outputs_have_no_drop():
    labels = np.arange(100) % 10
    ref = _outputs(_logits_predicting(labels), labels)
    result = evaluate("classify", "top1", ref, ref)
    assert result.drop_points == 0.0 and result.ci95 == (0.0, 0.0)
    assert result.p_value == 1.0 and result.n_samples == 100
    assert result.extras["agreement"] == 1.0 and result.extras["top5"] == 1.0


def test_flipped_predictions_give_expected_drop():
    labels = np.arange(100) % 10
    flipped = labels.copy()
    flipped[:10] = (labels[:10] + 1) % 10  # 10 of 100 now wrong
    ref, cand = _outputs(_logits_predicting(labels), labels), _outputs(_logits_predicting(flipped), labels)
    result = evaluate("classify", "top1", cand, ref)
    assert result.value == pytest.approx(0.9) and result.baseline_value == 1.0
    assert result.drop_points == pytest.approx(10.0)
    lo, hi = result.ci95
    assert 0.0 < lo <= 10.0 <= hi < 20.0
    assert result.p_value == pytest.approx(2 * 0.5**10)  # 10 discordant pairs, all one way
    assert result.extras["agreement"] == pytest.approx(0.9)


def test_agreement_metric_needs_no_labels():
    ref_pred = np.arange(50) % 10
    cand_pred = ref_pred.copy()
    cand_pred[:5] = (cand_pred[:5] + 3) % 10
    cand, ref = _outputs(_logits_predicting(cand_pred)), _outputs(_logits_predicting(ref_pred))
    result = evaluate("classify", "agreement", cand, ref)
    assert result.baseline_value == 1.0 and result.value == pytest.approx(0.9)
    assert result.drop_points == pytest.approx(10.0) and result.p_value is None


def test_top1_without_labels_is_a_data_error():
    logits = _outputs(_logits_predicting(np.arange(10)))
    with pytest.raises(InvalidDataError, match="labels"):
        evaluate("classify", "top1", logits, logits)


def test_top5_extras_skipped_for_few_classes():
    labels = np.array([0, 1, 2, 0])
    ref = _outputs(_logits_predicting(labels, n_classes=3), labels)
    result = evaluate("classify", None, ref, ref)
    assert result.metric == "top1" and "top5" not in result.extras


def test_embed_cosine_drop_and_extras():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((64, 32)).astype(np.float32)
    cand = ref + 0.3 * rng.standard_normal(ref.shape).astype(np.float32)
    result = evaluate("embed", "cosine", _outputs(cand), _outputs(ref))
    assert result.value == pytest.approx(mean_cosine(cand, ref))
    assert result.drop_points == pytest.approx(100 * (1 - result.value))
    lo, hi = result.ci95
    assert lo <= result.drop_points <= hi and lo > 0
    assert result.extras["cosine_min"] <= result.extras["cosine_p5"] <= result.value


def test_generic_sqnr_and_json_roundtrip():
    ref = np.linspace(-1, 1, 40, dtype=np.float32).reshape(10, 4)
    result = evaluate("generic", "sqnr", _outputs(ref), _outputs(ref))
    assert result.value == float("inf")
    text = json.dumps(result.to_dict(), allow_nan=False)  # summary.json forbids NaN/Inf
    again = EvalResult.from_dict(json.loads(text))
    assert again.value == float("inf") and np.isnan(again.drop_points) and again.metric == "sqnr"


def test_json_roundtrip_keeps_values():
    labels = np.arange(30) % 10
    ref = _outputs(_logits_predicting(labels), labels)
    result = evaluate("classify", "top1", ref, ref)
    assert EvalResult.from_dict(json.loads(json.dumps(result.to_dict(), allow_nan=False))) == result


def test_non_finite_candidate_raises_naming_it():
    ref = np.ones((4, 3), dtype=np.float32)
    bad = ref.copy()
    bad[2, 1] = np.nan
    with pytest.raises(InvalidModelError, match="int8-candidate.*non-finite"):
        evaluate("embed", "cosine", _outputs(bad, name="int8-candidate"), _outputs(ref, name="fp32"))


def test_metric_must_fit_task():
    ref = _outputs(np.ones((2, 3)))
    with pytest.raises(ValueError, match="does not apply"):
        evaluate("embed", "top1", ref, ref)


def test_extra_metric_probe_reports_candidate_and_baseline():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 40)
    ref = rng.standard_normal((80, 8)).astype(np.float32)
    ref[:, 0] += np.where(labels == 1, 6.0, -6.0)
    scrambled = rng.standard_normal(ref.shape).astype(np.float32)  # a candidate that lost the signal
    result = evaluate(
        "embed",
        "cosine",
        _outputs(scrambled, labels),
        _outputs(ref, labels),
        extra_metrics={"probe": probe_metric()},
    )
    assert result.extras["probe_baseline"] == 1.0
    assert result.extras["probe"] < 0.8


def test_collect_outputs_concatenates_batches_and_labels(stand_in_dataset):
    seen = []

    def track(done, total):
        seen.append((done, total))

    with OrtCpuBackend(matmul_chain(8, 16, 1, 6, two_outputs=True), threads=1) as backend:
        outputs = collect_outputs(backend, stand_in_dataset, batch_size=4, progress=track)
        every = collect_outputs(backend, stand_in_dataset, batch_size=5, output_name=ALL_OUTPUTS)
        direct = backend.infer({"x": stand_in_dataset.x})["y"]
    assert outputs.output_name == "y" and outputs.values.shape == (21, 6)
    np.testing.assert_allclose(outputs.values, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outputs.labels, stand_in_dataset.labels)
    assert seen[-1] == (21, 21) and len(seen) == 6
    assert sorted(every.arrays) == ["p", "y"]
    result = evaluate("generic", "cosine", every, every)
    assert result.extras["cosine:p"] == pytest.approx(1.0) and result.drop_points == pytest.approx(0.0)


def test_collect_outputs_rejects_unknown_output(stand_in_dataset):
    with OrtCpuBackend(matmul_chain(8, 16, 1, 6), threads=1) as backend:
        with pytest.raises(InvalidModelError, match="nope"):
            collect_outputs(backend, stand_in_dataset, output_name="nope")
