"""Text files: labels, encodings, blank and huge lines."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from trimtab.data import Dataset
from trimtab.data import text as text_module
from trimtab.data.text import detect_encoding, split_label
from trimtab.errors import InvalidDataError


def raw_text(line: str) -> dict:
    """A stand-in transform that keeps the text so tests can read it back."""
    return {"chars": np.frombuffer(line.encode("utf-8"), dtype=np.uint8).astype(np.int64)}


def texts(ds: Dataset) -> list[str]:
    return [bytes(s.inputs["chars"].astype("uint8")).decode("utf-8") for s in ds]


def test_label_prefix_names_map_to_sorted_indices(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("__label__pos great film\n\n   \n__label__neg dull .\n__label__pos fine\n")
    ds = Dataset(path, raw_text)
    assert len(ds) == 3 and ds.labelled
    assert ds.class_names == ("neg", "pos")
    assert [s.label for s in ds] == [1, 0, 1]
    assert texts(ds) == ["great film", "dull .", "fine"]
    assert [s.source.rsplit(":", 1)[1] for s in ds] == ["1", "4", "5"]  # blank lines skipped


def test_limit_does_not_change_class_indices(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("__label__pos a\n__label__neg b\n")
    ds = Dataset(path, raw_text, limit=1)
    assert len(ds) == 1 and [s.label for s in ds] == [1] and ds.class_names == ("neg", "pos")


def test_integer_labels_are_class_indices(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("__label__10 a\n__label__2 b\n")
    ds = Dataset(path, raw_text)
    assert [s.label for s in ds] == [10, 2] and ds.class_names is None


def test_partly_labelled_file_is_unlabelled(tmp_path: Path, caplog) -> None:
    path = tmp_path / "t.txt"
    path.write_text("__label__a x\nno label here\n")
    with caplog.at_level(logging.WARNING):
        ds = Dataset(path, raw_text)
    assert not ds.labelled and "1 of 2 lines" in caplog.text
    assert next(ds.batches(2)).labels is None


def test_split_label() -> None:
    assert split_label("__label__x hello world") == ("x", "hello world")
    assert split_label("hello __label__x") == (None, "hello __label__x")


def test_latin1_file_is_read_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "l.txt"
    path.write_bytes("__label__neg caf\xe9 cr\xe8me\n".encode("latin-1") + b"\x81 raw byte\n")
    with caplog.at_level(logging.WARNING):
        ds = Dataset(path, raw_text)
    assert "not valid UTF-8" in caplog.text and "latin-1" in caplog.text
    assert texts(ds) == ["café crème", "\x81 raw byte"]


def test_windows_1252_punctuation_is_kept(tmp_path: Path) -> None:
    # gensim's pang_lee_polarity.cor uses 0x97 for an em dash.
    path = tmp_path / "w.txt"
    path.write_bytes(b"good \x97 really\n")
    assert detect_encoding(path) == "cp1252"
    assert texts(Dataset(path, raw_text)) == ["good \u2014 really"]


def test_utf8_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "u.txt"
    path.write_bytes("\ufeff__label__a naïve\n".encode("utf-8"))
    ds = Dataset(path, raw_text)
    assert texts(ds) == ["naïve"] and ds.class_names == ("a",)


def test_huge_line_is_truncated_with_a_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(text_module, "MAX_LINE_CHARS", 10)
    path = tmp_path / "h.txt"
    path.write_text("short\n" + "y" * 50 + "\n")
    with caplog.at_level(logging.WARNING):
        ds = Dataset(path, raw_text)
    assert texts(ds) == ["short", "y" * 10]
    assert f"{path}:2" in caplog.text


def test_blank_file_and_unknown_suffix_raise(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("\n  \n")
    with pytest.raises(InvalidDataError, match="no non-blank lines"):
        Dataset(tmp_path / "b.txt", raw_text)
    (tmp_path / "d.csv").write_text("a\n")
    with pytest.raises(InvalidDataError, match="unsupported file type .csv"):
        Dataset(tmp_path / "d.csv", raw_text)


def test_text_without_transform_asks_for_a_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("x\n")
    with pytest.raises(ValueError, match="TextTransform"):
        Dataset(tmp_path / "t.txt")
