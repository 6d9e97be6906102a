"""Build each real example from scratch and check its fp32 quality (slow: ~1 minute in all).

Run with `pytest tests/examples -m slow -s` to see the measured figures.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from trimtab.examples import get_example

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, dataset, batch_size=32):
    outputs, labels = [], []
    for batch in dataset.batches(batch_size):
        outputs.append(session.run(None, batch.inputs)[0])
        labels.append(batch.labels)
    joined = None if any(part is None for part in labels) else np.concatenate(labels)
    return np.concatenate(outputs), joined


class _Outputs:
    """The `.values` view measure.evaluate.Outputs gives extra metrics."""

    def __init__(self, values):
        self.values = values


# effnet-lite0 --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def effnet(example_cache):
    example = get_example("effnet-lite0")
    started = time.perf_counter()
    path = example.model_path()
    print(f"\neffnet-lite0 model ready in {time.perf_counter() - started:.1f} s")
    return example, path


def test_effnet_fp32_top1_on_the_20_labelled_photos(effnet):
    example, path = effnet
    validation = example.validation_data()
    assert len(validation) == 20 and validation.labelled
    logits, labels = _run(_session(path), validation)
    assert logits.shape == (20, 1000)
    top1 = float(np.mean(logits.argmax(axis=1) == labels))
    print(f"effnet-lite0 fp32 top-1 on 20 labelled photos: {top1:.2f} ({round(top1 * 20)}/20)")
    assert top1 >= 0.8


def test_effnet_calibration_and_agreement_sets(effnet):
    example, _ = effnet
    calibration = example.calibration_data()
    assert len(calibration) == example.calibration_size
    first, again = next(iter(calibration)), next(iter(example.calibration_data()))
    np.testing.assert_array_equal(first.inputs["input"], again.inputs["input"])  # deterministic
    assert first.inputs["input"].shape == (3, 224, 224)
    agreement = example.agreement_data()
    assert len(agreement) == 128 and not agreement.labelled
    calibration_views = {sample.source for sample in calibration}
    assert not calibration_views & {sample.source for sample in agreement}


def test_effnet_cache_is_instant_and_rebuilds_a_corrupt_file(effnet):
    example, path = effnet
    started = time.perf_counter()
    assert example.model_path() == path
    assert time.perf_counter() - started < 0.5
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a truncated file, as after a crash mid-copy
    assert example.model_path().read_bytes() == good  # the export is deterministic


# fashion-cnn ---------------------------------------------------------------------------------
def test_fashion_cnn_trains_to_a_useful_accuracy():
    example = get_example("fashion-cnn")
    started = time.perf_counter()
    path = example.model_path()
    print(f"\nfashion-cnn trained and exported in {time.perf_counter() - started:.1f} s")
    validation = example.validation_data()
    assert len(validation) == 10_000 and validation.labelled
    logits, labels = _run(_session(path), validation, batch_size=256)
    accuracy = float(np.mean(logits.argmax(axis=1) == labels))
    print(f"fashion-cnn fp32 test accuracy: {accuracy:.4f}")
    assert accuracy >= 0.85
    calibration = example.calibration_data()
    assert len(calibration) == 512
    sample = next(iter(calibration))
    assert sample.inputs["input"].shape == (1, 28, 28) and 0 <= sample.inputs["input"].min()
    assert sample.inputs["input"].max() <= 1


# minilm --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm(example_cache):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    example = get_example("minilm")
    started = time.perf_counter()
    path = example.model_path()
    print(f"\nminilm exported in {time.perf_counter() - started:.1f} s")
    return example, _session(path)


def test_minilm_padded_and_unpadded_batches_agree(minilm):
    example, session = minilm
    samples = list(example.validation_data())[:16]
    one_by_one = np.concatenate([session.run(None, {k: v[None] for k, v in s.inputs.items()})[0] for s in samples])
    lengths = {len(s.inputs["input_ids"]) for s in samples}
    assert len(lengths) > 1  # the batch really is padded
    from trimtab.data import Dataset

    batched, _ = _run(session, Dataset(samples, name="pad-check"), batch_size=16)
    cosines = np.sum(one_by_one * batched, axis=1)
    print(f"\nminilm padded vs unpadded cosine: min {cosines.min():.7f}")
    assert cosines.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_minilm_matches_sentence_transformers(minilm):
    """The in-graph pooling + normalisation reproduce sentence-transformers' embeddings."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from trimtab.examples import minilm as recipe

    _, session = minilm
    texts = [text for text, _ in recipe.polarity_sentences()[:8]]
    reference = SentenceTransformer(str(recipe.model_dir()), device="cpu").encode(texts)
    from trimtab.data import Dataset

    samples = [recipe._text_sample(text, None, "t") for text in texts]
    ours, _ = _run(session, Dataset(samples, name="st-check"), batch_size=8)
    assert np.sum(ours * reference, axis=1).min() >= 0.9999


def test_minilm_downstream_metrics_at_fp32(minilm):
    example, session = minilm
    validation = example.validation_data()
    assert len(validation) == 200 and validation.labelled
    assert len(example.calibration_data()) == 100
    embeddings, labels = _run(session, validation)
    probe = example.extra_metrics()["polarity_probe"]
    assert probe.data is None  # runs on the validation outputs, as tune's evaluate() calls it
    probe_value = probe(_Outputs(embeddings), _Outputs(embeddings), labels)
    wordsim = example.dataset_metrics()["wordsim_spearman"]
    words, _ = _run(session, wordsim.data)
    assert len(words) == 437
    spearman = wordsim(_Outputs(words), _Outputs(words))
    print(f"\nminilm fp32 polarity probe {probe_value:.3f}, WordSim353 Spearman {spearman:.3f}")
    assert 0.65 <= probe_value <= 0.85
    assert 0.68 <= spearman <= 0.78
    # the dict plugs straight into measure's evaluate(), as tune does
    from trimtab.measure.evaluate import Outputs, evaluate

    reference = Outputs({"embedding": embeddings}, "embedding", labels)
    result = evaluate("embed", "cosine", reference, reference, extra_metrics=example.extra_metrics())
    assert result.extras["polarity_probe"] == pytest.approx(probe_value)
    # a candidate whose embeddings are noise must score clearly worse than fp32
    noise = np.random.default_rng(0).standard_normal(embeddings.shape)
    assert probe(_Outputs(noise), _Outputs(embeddings), labels) < probe_value - 0.1
