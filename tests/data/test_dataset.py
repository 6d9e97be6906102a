"""Dataset: batching, padding, take/limit, in-memory sources, fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trimtab.data import Batch, Dataset, ImageTransform, Sample, collate, open_dataset
from trimtab.errors import InvalidDataError

SMALL = ImageTransform(resize=16, crop=16)


def token_sample(ids: list[int], label: int | None = None) -> Sample:
    ids_array = np.asarray(ids, dtype=np.int64)
    return Sample({"input_ids": ids_array, "attention_mask": np.ones_like(ids_array)}, label, f"s{len(ids)}")


def test_variable_length_tokens_are_padded_with_zero_and_mask_zero() -> None:
    batch = collate([token_sample([5, 6, 7], 1), token_sample([8], 0), token_sample([9, 9], 1)])
    assert batch.inputs["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 9, 0]]
    assert batch.inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch.inputs["input_ids"].dtype == np.int64
    assert batch.labels.tolist() == [1, 0, 1] and len(batch) == 3


def test_pad_values_from_the_transform_are_used_for_ids() -> None:
    samples = [token_sample([5, 6]), token_sample([8])]
    batch = collate(samples, {"input_ids": 1})
    assert batch.inputs["input_ids"].tolist() == [[5, 6], [8, 1]]
    assert batch.inputs["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_float_inputs_of_different_shapes_raise() -> None:
    a = Sample({"x": np.zeros((3, 4), np.float32)}, source="a.png")
    b = Sample({"x": np.zeros((3, 5), np.float32)}, source="b.png")
    with pytest.raises(InvalidDataError, match="different shapes") as info:
        collate([a, b])
    assert "a.png" in info.value.message and "b.png" in info.value.message


def test_samples_with_different_inputs_raise() -> None:
    a = Sample({"x": np.zeros(2, np.float32)}, source="a")
    b = Sample({"y": np.zeros(2, np.float32)}, source="b")
    with pytest.raises(InvalidDataError, match="same model inputs"):
        collate([a, b])


def test_batches_last_one_smaller_and_labels_none_when_unlabelled() -> None:
    ds = Dataset([Sample({"x": np.full(2, i, np.float32)}) for i in range(7)])
    batches = list(ds.batches(3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert all(isinstance(b, Batch) and b.labels is None for b in batches)
    assert batches[2].inputs["x"].tolist() == [[6.0, 6.0]]
    with pytest.raises(ValueError):
        next(ds.batches(0))


def test_image_folder_batches(tmp_path: Path, write_image) -> None:
    for i in range(5):
        write_image(tmp_path / ("even" if i % 2 == 0 else "odd") / f"{i}.png", size=(20 + i, 18), seed=i)
    batches = list(Dataset(tmp_path, SMALL).batches(2))
    assert [b.inputs["input"].shape for b in batches] == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    assert np.concatenate([b.labels for b in batches]).tolist() == [0, 0, 0, 1, 1]


def test_raw_items_with_labels_and_transform() -> None:
    images = [(Image.new("RGB", (20, 20), (i * 40,) * 3), i) for i in range(3)]
    ds = Dataset(images, SMALL)
    assert ds.labelled and ds.kind == "memory"
    assert [s.label for s in ds] == [0, 1, 2]
    assert next(ds.batches(3)).inputs["input"].shape == (3, 3, 16, 16)


def test_raw_dicts_need_no_transform_but_samples_refuse_one() -> None:
    with pytest.raises(ValueError, match="transform"):
        Dataset(["some text"])
    dicts = Dataset([({"x": np.arange(2)}, 3), ({"x": np.arange(2) + 1}, 4)])
    assert next(dicts.batches(2)).inputs["x"].tolist() == [[0, 1], [1, 2]]
    samples = [Sample({"x": np.zeros(1)})]
    assert len(Dataset(samples)) == 1
    with pytest.raises(ValueError, match="transform=None"):
        Dataset(samples, SMALL)


def test_take_and_limit(tmp_path: Path) -> None:
    ds = Dataset([Sample({"x": np.full(1, i, np.float32)}, i) for i in range(10)], limit=6)
    assert len(ds) == 6
    first = ds.take(2)
    assert len(first) == 2 and [s.label for s in first] == [0, 1]
    assert len(ds.take(100)) == 6
    with pytest.raises(ValueError):
        Dataset([Sample({"x": np.zeros(1)})], limit=0)


def test_iterating_twice_gives_the_same_samples(tmp_path: Path, write_image) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    ds = Dataset(tmp_path, SMALL)
    first = [s.inputs["input"] for s in ds]
    second = [s.inputs["input"] for s in ds]
    assert len(first) == 3
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_transform_errors_name_the_sample() -> None:
    def broken(raw):
        raise RuntimeError("boom")

    ds = Dataset([{"x": np.zeros(1)}], broken)
    with pytest.raises(RuntimeError) as info:
        list(ds)
    assert "memory[0]" in "".join(info.value.__notes__)


def test_open_dataset_accepts_a_preset_name(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "a.png", size=(300, 260))
    ds = open_dataset(tmp_path, "effnet-lite", limit=1)
    sample = next(iter(ds))
    assert sample.inputs["input"].shape == (3, 224, 224)
    assert ds.transform == ImageTransform.preset("effnet-lite")


class TestFingerprint:
    @pytest.fixture
    def folder(self, tmp_path: Path, write_image) -> Path:
        for i in range(3):
            write_image(tmp_path / "one" / "cls" / f"{i}.png", seed=i)
        return tmp_path / "one"

    def test_stable_across_instances_and_folder_moves(self, tmp_path: Path, folder: Path) -> None:
        before = Dataset(folder, SMALL).fingerprint()
        assert len(before) == 64 and Dataset(folder, SMALL).fingerprint() == before
        moved = folder.rename(tmp_path / "two")
        assert Dataset(moved, SMALL).fingerprint() == before

    def test_changes_when_a_file_changes(self, folder: Path, write_image) -> None:
        before = Dataset(folder, SMALL).fingerprint()
        write_image(folder / "cls" / "1.png", seed=99)
        assert Dataset(folder, SMALL).fingerprint() != before

    def test_changes_when_a_label_or_the_file_set_changes(self, folder: Path) -> None:
        before = Dataset(folder, SMALL).fingerprint()
        (folder / "cls").rename(folder / "other")  # same bytes, other class name
        renamed = Dataset(folder, SMALL).fingerprint()
        assert renamed != before
        assert Dataset(folder, SMALL, limit=2).fingerprint() != renamed

    def test_changes_when_the_transform_changes(self, folder: Path) -> None:
        before = Dataset(folder, SMALL).fingerprint()
        assert Dataset(folder, ImageTransform(resize=16, crop=15)).fingerprint() != before
        assert Dataset(folder, ImageTransform(resize=16, crop=16)).fingerprint() == before

    def test_npz_and_text_content(self, tmp_path: Path) -> None:
        path = tmp_path / "d.npz"
        np.savez(path, x=np.zeros((3, 2), np.float32))
        before = Dataset(path).fingerprint()
        np.savez(path, x=np.zeros((3, 2), np.float32))
        assert Dataset(path).fingerprint() == before  # rewritten, same content
        np.savez(path, x=np.ones((3, 2), np.float32))
        assert Dataset(path).fingerprint() != before

        def tokens(line: str) -> dict:
            return {"ids": np.array([len(line)], np.int64)}

        text = tmp_path / "t.txt"
        text.write_text("__label__a one\n__label__b two\n")
        before = Dataset(text, tokens).fingerprint()
        text.write_text("__label__a one\n__label__a two\n")
        assert Dataset(text, tokens).fingerprint() != before

    def test_memory_samples(self) -> None:
        def make(value: float, source: str) -> Dataset:
            return Dataset([Sample({"x": np.full(2, value, np.float32)}, 1, source)])

        assert make(0.0, "a").fingerprint() == make(0.0, "b").fingerprint()  # source is a note
        assert make(0.0, "a").fingerprint() != make(1.0, "a").fingerprint()
