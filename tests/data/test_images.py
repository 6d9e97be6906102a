"""Image folders: layouts, labels, broken files, unusual Pillow modes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trimtab.data import Dataset, ImageTransform
from trimtab.data import images as images_module
from trimtab.data.images import load_image, scan_image_folder, to_rgb_or_l
from trimtab.errors import InvalidDataError

SMALL = ImageTransform(resize=16, crop=16)


def test_flat_folder_is_unlabelled_sorted_and_ignores_other_files(flat_folder: Path) -> None:
    index = scan_image_folder(flat_folder)
    assert [e.relative for e in index.entries] == ["a.jpg", "b.png", "c.JPEG", "d.bmp"]
    assert all(e.label is None for e in index.entries)
    ds = Dataset(flat_folder, SMALL)
    assert len(ds) == 4 and not ds.labelled
    assert [Path(s.source).name for s in ds] == ["a.jpg", "b.png", "c.JPEG", "d.bmp"]


def test_hidden_files_are_not_images(flat_folder: Path, write_corrupt) -> None:
    write_corrupt(flat_folder / "._a.jpg")  # macOS resource fork next to a real image
    assert len(scan_image_folder(flat_folder).entries) == 4


def test_class_subfolders_label_by_sorted_name(tmp_path: Path, write_image) -> None:
    for cls, seed in [("dog", 1), ("cat", 2), ("cat", 3)]:
        write_image(tmp_path / cls / f"{seed}.png", seed=seed)
    ds = Dataset(tmp_path, SMALL)
    assert ds.labelled
    assert ds.class_names == ("cat", "dog")
    assert [(Path(s.source).parent.name, s.label) for s in ds] == [("cat", 0), ("cat", 0), ("dog", 1)]


def test_integer_folder_names_are_imagenet_indices(tmp_path: Path, write_image) -> None:
    # Sorted as text, "10" would come before "2"; the folder name is the class index itself.
    for cls in ["2", "10", "999"]:
        write_image(tmp_path / cls / "x.png", seed=int(cls))
    ds = Dataset(tmp_path, SMALL)
    assert sorted(s.label for s in ds) == [2, 10, 999]
    assert ds.class_names is None


def test_labels_csv_labels_listed_files_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, write_image
) -> None:
    for name, seed in [("x.png", 1), ("y.png", 2), ("z.png", 3)]:
        write_image(tmp_path / name, seed=seed)
    (tmp_path / "labels.csv").write_text("file,label\ny.png,7\nx.png,281\n")
    with caplog.at_level(logging.WARNING):
        ds = Dataset(tmp_path, SMALL)
    assert [(Path(s.source).name, s.label) for s in ds] == [("x.png", 281), ("y.png", 7)]
    assert "z.png" in caplog.text


def test_labels_csv_with_class_names_and_missing_file(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("a.png,zebra\nb.png,ant\n")
    with pytest.raises(InvalidDataError, match="b.png"):
        Dataset(tmp_path, SMALL)
    (tmp_path / "labels.csv").write_text("a.png,zebra\n")
    assert Dataset(tmp_path, SMALL).class_names == ("zebra",)


def test_corrupt_file_is_skipped_with_a_warning_naming_it(
    flat_folder: Path, caplog: pytest.LogCaptureFixture, write_corrupt
) -> None:
    bad = write_corrupt(flat_folder / "broken.jpg")
    good = flat_folder / "a.jpg"
    truncated = flat_folder / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING):
        ds = Dataset(flat_folder, SMALL)
    assert len(ds) == 4
    assert str(bad) in caplog.text and str(truncated) in caplog.text
    assert all("broken" not in s.source and "cut" not in s.source for s in ds)


def test_only_corrupt_files_raise_naming_the_folder(tmp_path: Path, write_corrupt) -> None:
    write_corrupt(tmp_path / "a.jpg")
    write_corrupt(tmp_path / "b.png")
    with pytest.raises(InvalidDataError, match="none of the 2 image files") as info:
        Dataset(tmp_path, SMALL)
    assert str(tmp_path) in str(info.value) and info.value.hint


def test_empty_folder_and_missing_path_raise_with_hint(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InvalidDataError, match="no images found") as info:
        Dataset(tmp_path / "empty", SMALL)
    assert str(tmp_path / "empty") in info.value.message and info.value.hint
    with pytest.raises(InvalidDataError, match="does not exist") as info:
        Dataset(tmp_path / "nope", SMALL)
    assert str(tmp_path / "nope") in info.value.message and info.value.hint


def test_image_folder_without_transform_is_refused(flat_folder: Path) -> None:
    with pytest.raises(ValueError, match="ImageTransform.preset"):
        Dataset(flat_folder)


def test_limit_stops_scanning_early(flat_folder: Path, write_corrupt) -> None:
    write_corrupt(flat_folder / "z_broken.jpg")  # sorted last: never probed with limit=2
    index = scan_image_folder(flat_folder, limit=2)
    assert [e.relative for e in index.entries] == ["a.jpg", "b.png"]
    assert index.skipped == ()


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "RGBA", "1"])
def test_unusual_modes_decode_to_rgb_or_l(tmp_path: Path, mode: str, write_image) -> None:
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = write_image(tmp_path / f"img{suffix}", mode=mode)
    with Image.open(path) as original:
        assert original.mode == mode  # the file really is in that mode
    image = load_image(path)
    assert image.mode in ("RGB", "L")
    out = ImageTransform(resize=16, crop=16)(image)["input"]
    assert out.shape == (3, 16, 16) and np.isfinite(out).all()


def test_palette_with_transparency_converts_without_warning(tmp_path: Path, recwarn) -> None:
    image = Image.new("P", (8, 8), 3)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
    image.info["transparency"] = 0
    image.save(tmp_path / "t.png", transparency=0)
    converted = load_image(tmp_path / "t.png")
    assert converted.mode == "RGB" and converted.getpixel((0, 0)) == (0, 0, 255)
    assert not [w for w in recwarn if "Palette" in str(w.message)]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as original:
        assert original.mode.startswith("I")
    image = load_image(tmp_path / "deep.png")
    assert image.mode == "L"
    assert np.asarray(image).tolist() == [[0, 100, 255]]


def test_grayscale_preset_converts_colour_to_one_channel(tmp_path: Path, write_image) -> None:
    path = write_image(tmp_path / "c.png", size=(28, 28))
    with Image.open(path) as original:
        out = ImageTransform.preset("fashion-mnist")(to_rgb_or_l(original))["input"]
    assert out.shape == (1, 28, 28) and out.min() >= 0.0 and out.max() <= 1.0


def test_oversized_image_is_a_bad_file(flat_folder: Path, monkeypatch, caplog, write_image) -> None:
    write_image(flat_folder / "e_big.png", size=(200, 200), seed=9)
    monkeypatch.setattr(images_module, "MAX_PIXELS", 100 * 100)
    with caplog.at_level(logging.WARNING):
        ds = Dataset(flat_folder, SMALL)
    assert len(ds) == 4 and "e_big.png" in caplog.text


def test_pillow_decompression_bomb_error_is_a_bad_file(
    tmp_path: Path, monkeypatch, caplog, write_image
) -> None:
    write_image(tmp_path / "ok.png", size=(10, 10))
    write_image(tmp_path / "bomb.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above 2x this
    with caplog.at_level(logging.WARNING):
        ds = Dataset(tmp_path, SMALL)
    assert len(ds) == 1 and "DecompressionBombError" in caplog.text


def test_iteration_skips_a_file_broken_after_the_scan(flat_folder: Path, caplog, write_corrupt) -> None:
    ds = Dataset(flat_folder, SMALL)
    write_corrupt(flat_folder / "b.png")
    with caplog.at_level(logging.WARNING):
        names = [Path(s.source).name for s in ds]
    assert names == ["a.jpg", "c.JPEG", "d.bmp"] and "b.png" in caplog.text
