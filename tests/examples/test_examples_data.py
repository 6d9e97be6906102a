"""Preprocessing and metric arithmetic of the examples, on synthetic inputs (fast)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from trimtab.errors import InvalidDataError
from trimtab.examples import _photos, effnet_lite0, fashion_cnn, minilm


# effnet-lite0 --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 127, 255])
def test_effnet_preprocess_maps_pixels_to_x_minus_127_over_128(value):
    image = Image.new("RGB", (300, 500), (value, value, value))
    array = effnet_lite0.preprocess(image)
    assert array.shape == (3, 224, 224) and array.dtype == np.float32
    np.testing.assert_allclose(array, (value - 127) / 128, atol=1e-6)


def test_effnet_preprocess_takes_the_centre_crop_without_resizing_a_256_image():
    # 512 wide, 256 high: the shorter side is already 256, so the crop is columns 144..367.
    columns = np.tile(np.arange(512) % 256, (256, 1)).astype(np.uint8)
    red = np.stack([columns, np.zeros_like(columns), np.full_like(columns, 255)], axis=-1)
    array = effnet_lite0.preprocess(Image.fromarray(red))
    expected_red = (np.arange(144, 368) % 256 - 127) / 128
    np.testing.assert_allclose(array[0, 0], expected_red, atol=1e-6)
    np.testing.assert_allclose(array[1], -127 / 128)
    np.testing.assert_allclose(array[2], 128 / 128)


def test_effnet_preprocess_resizes_the_shorter_side_first():
    # A 2x larger copy of a smooth image gives nearly the same crop (same field of view).
    small = np.linspace(0, 255, 256 * 384).reshape(256, 384).astype(np.uint8)
    large = np.asarray(Image.fromarray(small).resize((768, 512), Image.BICUBIC))
    a = effnet_lite0.preprocess(Image.fromarray(small).convert("RGB"))
    b = effnet_lite0.preprocess(Image.fromarray(large).convert("RGB"))
    assert np.abs(a - b).max() < 0.05


def test_random_views_are_deterministic_and_inside_the_image():
    image = Image.new("RGB", (640, 427))
    first = [_photos.random_view(image, np.random.default_rng([0, i]))[1] for i in range(20)]
    again = [_photos.random_view(image, np.random.default_rng([0, i]))[1] for i in range(20)]
    assert first == again and len(set(first)) == 20
    for i in range(20):
        view, _ = _photos.random_view(image, np.random.default_rng([1, i]))
        assert 0.4 * 427 * 0.85 <= min(view.size) and max(view.size) <= 640


# fashion-cnn ---------------------------------------------------------------------------------
def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trips(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    _write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(fashion_cnn.read_idx(tmp_path / "x.gz"), images)


def test_read_idx_rejects_a_bad_header_and_a_short_body(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as handle:
        handle.write(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"\x00" * 12)
    with pytest.raises(InvalidDataError):
        fashion_cnn.read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as handle:
        handle.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(InvalidDataError):
        fashion_cnn.read_idx(tmp_path / "short.gz")


def test_fashion_missing_data_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIMTAB_FASHION_MNIST", str(tmp_path))
    fashion_cnn.load_split.cache_clear()
    try:
        with pytest.raises(InvalidDataError) as caught:
            fashion_cnn.load_split("test")
        assert "dataset-fashion-mnist" in str(caught.value)
    finally:
        fashion_cnn.load_split.cache_clear()


def test_fashion_input_scaling():
    pixels = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = fashion_cnn.to_input(pixels)
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [[0, 1], [0.2, 0.4]], atol=1e-7)


# minilm metrics ------------------------------------------------------------------------------
def test_spearman_matches_hand_computed_values():
    assert minilm.spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert minilm.spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])) == pytest.approx(-1.0)
    # ties: ranks x = [0.5, 0.5, 2, 3], y = [0, 1, 2, 3] -> rho = 0.9486833
    assert minilm.spearman(np.array([1, 1, 2, 3.0]), np.arange(4.0)) == pytest.approx(0.9486833, abs=1e-6)


def test_stratified_folds_partition_and_balance():
    labels = np.array([0] * 10 + [1] * 15)
    folds = minilm.stratified_folds(labels, 5, seed=0)
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(25))
    assert all(np.sum(labels[fold] == 0) == 2 and np.sum(labels[fold] == 1) == 3 for fold in folds)
    assert [f.tolist() for f in folds] == [f.tolist() for f in minilm.stratified_folds(labels, 5, seed=0)]


def test_polarity_probe_separable_data_and_a_destroyed_candidate():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    centres = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    reference = centres[labels] + 0.05 * rng.standard_normal((40, 3))
    assert minilm.polarity_probe_accuracy(reference, reference, labels) == 1.0
    swapped = reference[:, [1, 0, 2]]  # a candidate that maps each class onto the other
    assert minilm.polarity_probe_accuracy(swapped, reference, labels) == 0.0


def test_wordsim_spearman_uses_pair_cosines():
    words = ["a", "b", "c"]
    embeddings = np.array([[1.0, 0], [1.0, 0.1], [0, 1.0]])
    pairs = [("a", "b", 9.0), ("a", "c", 1.0), ("b", "c", 2.0)]
    assert minilm.wordsim_spearman(embeddings, words, pairs) == pytest.approx(1.0)
    with pytest.raises(InvalidDataError):
        minilm.wordsim_spearman(embeddings[:2], words, pairs)


def test_minilm_pad_batch_right_pads_with_zeros():
    a = {name: np.array([1, 2, 3]) for name in minilm.INPUT_NAMES}
    b = {name: np.array([4]) for name in minilm.INPUT_NAMES}
    padded = minilm.pad_batch([a, b])
    np.testing.assert_array_equal(padded["attention_mask"], [[1, 2, 3], [4, 0, 0]])


# the transforms offered for user data ----------------------------------------------------------
def test_effnet_transform_is_the_one_its_own_samples_use():
    from trimtab.examples import get_example

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    inputs = get_example("effnet-lite0").transform()(image)
    np.testing.assert_array_equal(inputs["input"], effnet_lite0.preprocess(image))


def test_fashion_transform_matches_the_idx_scaling():
    from trimtab.examples import get_example

    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    inputs = get_example("fashion-cnn").transform()(Image.fromarray(pixels))
    np.testing.assert_allclose(inputs["input"], fashion_cnn.to_input(pixels), atol=1e-6)


def test_minilm_encoding_is_unpadded_and_truncated():
    pytest.importorskip("tokenizers")
    short = minilm.encode("hello world")
    assert short["input_ids"][0] == 101 and short["input_ids"][-1] == 102  # [CLS] ... [SEP]
    assert len(short["input_ids"]) == 4 and short["attention_mask"].tolist() == [1, 1, 1, 1]
    assert all(array.dtype == np.int64 for array in short.values())
    long = minilm.encode("word " * 500)
    assert len(long["input_ids"]) == minilm.MAX_TOKENS and long["input_ids"][-1] == 102


def test_gensim_files_parse():
    pytest.importorskip("gensim")
    sentences = minilm.polarity_sentences()
    assert len(sentences) == 200 and {label for _, label in sentences} == {0, 1}
    pairs = minilm.wordsim_pairs()
    assert len(pairs) == 353 and all(0 <= score <= 10 for _, _, score in pairs)
    calibration = minilm.calibration_sentences(100)
    assert len(calibration) == 100 and len(set(calibration)) == 100
    assert not set(calibration) & {text for text, _ in sentences}


def test_fashion_weights_round_trip_and_corrupt_file_retrains(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    trained = []
    monkeypatch.setattr(fashion_cnn, "train", lambda network: trained.append(network))
    weights = tmp_path / "w.pt"
    first = fashion_cnn.trained_network(weights)
    assert len(trained) == 1 and weights.is_file()
    again = fashion_cnn.trained_network(weights)  # loads, no training
    assert len(trained) == 1
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert (a == b).all()
    weights.write_bytes(b"not a torch file")
    fashion_cnn.trained_network(weights)
    assert len(trained) == 2
