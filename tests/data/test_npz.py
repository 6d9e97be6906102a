""".npz sources: one array per input, optional labels, clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trimtab.data import Dataset
from trimtab.errors import InvalidDataError


def test_npz_with_labels(tmp_path: Path) -> None:
    x = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    mask = np.ones((5, 2), dtype=np.int64)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, mask=mask, labels=np.array([4, 3, 2, 1, 0]))
    ds = Dataset(path)
    assert len(ds) == 5 and ds.labelled and ds.kind == "npz"
    samples = list(ds)
    assert sorted(samples[1].inputs) == ["mask", "x"]
    np.testing.assert_array_equal(samples[1].inputs["x"], x[1])
    assert [s.label for s in samples] == [4, 3, 2, 1, 0]
    assert samples[2].source.endswith("d.npz[2]")


def test_npz_without_labels_compressed(tmp_path: Path) -> None:
    path = tmp_path / "u.npz"
    np.savez_compressed(path, input=np.zeros((3, 2, 2), np.float32))
    ds = Dataset(path)
    assert not ds.labelled
    batch = next(ds.batches(8))
    assert batch.labels is None and batch.inputs["input"].shape == (3, 2, 2)


def test_npz_mismatched_lengths_name_each_array(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, a=np.zeros((4, 2)), b=np.zeros((3, 2)), labels=np.zeros(4, np.int64))
    with pytest.raises(InvalidDataError, match="different numbers of samples") as info:
        Dataset(path)
    assert "a: 4" in info.value.message and "b: 3" in info.value.message


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"labels": np.zeros(3, np.int64)}, "no input arrays"),
        ({"x": np.zeros((3, 2)), "labels": np.zeros(3, np.float32)}, "one integer per sample"),
        ({"x": np.array(1.0)}, "scalar"),
        ({"x": np.zeros((0, 2))}, "0 samples"),
        ({"x": np.array([[1], "a"], dtype=object)}, "Python objects"),
    ],
)
def test_npz_problems_raise_invalid_data(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, **arrays)
    with pytest.raises(InvalidDataError, match=message):
        Dataset(path)


def test_not_a_zip_is_invalid_data(tmp_path: Path) -> None:
    path = tmp_path / "fake.npz"
    path.write_bytes(b"hello")
    with pytest.raises(InvalidDataError, match="not a readable .npz"):
        Dataset(path)


def test_npz_limit_and_take(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(10, dtype=np.float32)[:, None])
    assert [float(s.inputs["x"][0]) for s in Dataset(path, limit=3)] == [0.0, 1.0, 2.0]
    assert len(Dataset(path).take(4)) == 4 and len(Dataset(path).take(40)) == 10
