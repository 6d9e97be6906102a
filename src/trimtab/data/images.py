"""Image folders: find the files, work out their labels, decode them with Pillow.

A folder is read in one of three layouts (checked in this order):

    labels.csv        columns `file,label`; `file` is relative to the folder. Labelled.
    class sub-folders `cat/1.jpg`, `dog/2.jpg`: class index = sorted sub-folder order, or the
                      folder name itself when every name is an integer (ImageNet's `0`..`999`).
    flat              images directly in the folder. Unlabelled.

Every candidate file is decoded once while scanning (JPEGs at 1/8 scale, which still reads all
their data) so that broken files are reported up front, `len(dataset)` is exact, and a folder
with nothing usable fails before calibration starts. Pixels are not kept: iteration decodes
again, one image at a time.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trimtab.errors import InvalidDataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm"})
LABELS_CSV = "labels.csv"

# Pillow only refuses images above 2 x 89 Mpx (and merely warns above 89 Mpx). A calibration
# photo is a few Mpx; anything past 100 Mpx is a scan or a decompression bomb, and decoding it
# costs gigabytes. We check the header's size ourselves instead of changing Pillow's global
# Image.MAX_IMAGE_PIXELS, which would change behaviour for every other library in the process.
MAX_PIXELS = 100_000_000

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class UndecodableImageError(InvalidDataError):
    """One image file could not be decoded (raised per file; the scan turns it into a warning)."""


@dataclass(frozen=True)
class ImageEntry:
    """One image file and its class index (None when the folder is unlabelled)."""

    path: Path
    relative: str  # posix path relative to the folder root: stable across machines
    label: int | None


@dataclass(frozen=True)
class ImageFolderIndex:
    """The decodable images of a folder, in sorted order, with the class-name mapping if any."""

    root: Path
    entries: tuple[ImageEntry, ...]
    class_names: tuple[str, ...] | None
    skipped: tuple[str, ...] = ()  # files that failed to decode during the scan


def is_image_file(path: Path) -> bool:
    """True for image extensions (any case); hidden files such as macOS `._x.jpg` are not images."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files under `folder`, sorted by relative posix path so the order is the same everywhere."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = [p for p in candidates if is_image_file(p) and not _has_hidden_part(p, folder)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _has_hidden_part(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def scan_image_folder(root: Path, *, limit: int | None = None) -> ImageFolderIndex:
    """Find, label and check the images of `root`; stop after `limit` good ones.

    Raises InvalidDataError when the folder is missing, holds no images, or none decode.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidDataError(
            f"image folder {root} does not exist",
            hint="pass an existing folder of images, a .npz file or a .txt file",
        )
    candidates, class_names = _find_candidates(root)
    if not candidates:
        raise InvalidDataError(
            f"no images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})",
            hint="put image files in the folder, or one sub-folder of images per class",
        )
    good, bad = _probe_all(candidates, limit)
    if not good:
        raise InvalidDataError(
            f"none of the {len(bad)} image files in {root} could be decoded (first: {bad[0]})",
            hint="check that the files are real images (re-export them, or remove the broken ones)",
        )
    logger.info("%s: %d image(s) ready, %d skipped", root, len(good), len(bad))
    return ImageFolderIndex(root, tuple(good), class_names, tuple(bad))


def _find_candidates(root: Path) -> tuple[list[ImageEntry], tuple[str, ...] | None]:
    """Pick the folder layout (labels.csv, class sub-folders, flat) and list its files."""
    if (root / LABELS_CSV).is_file():
        return _entries_from_labels_csv(root)
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    class_dirs = [d for d in class_dirs if list_images(d, recursive=True)]
    if class_dirs:
        return _entries_from_class_dirs(root, class_dirs)
    return [ImageEntry(p, p.name, None) for p in list_images(root)], None


def _entries_from_class_dirs(
    root: Path, class_dirs: list[Path]
) -> tuple[list[ImageEntry], tuple[str, ...] | None]:
    loose = list_images(root)
    if loose:
        logger.warning(
            "%s has class sub-folders; ignoring %d image(s) directly in it (first: %s)",
            root, len(loose), loose[0].name,
        )
    names = [d.name for d in class_dirs]
    labels, class_names = labels_from_names(names)
    entries = []
    for folder, label in zip(class_dirs, labels, strict=True):
        for path in list_images(folder, recursive=True):
            entries.append(ImageEntry(path, path.relative_to(root).as_posix(), label))
    return entries, class_names


def labels_from_names(names: list[str]) -> tuple[list[int], tuple[str, ...] | None]:
    """Class names -> indices. All-integer names are the indices themselves (ImageNet's `0`..`999`,
    and `10` must not sort before `2`); otherwise indices follow sorted name order, which is also
    ImageNet's order for wnid folders (`n01440764`, ...). Returns (labels, class_names or None)."""
    if all(name.isdecimal() for name in names):
        return [int(name) for name in names], None
    class_names = tuple(sorted(set(names)))
    index = {name: i for i, name in enumerate(class_names)}
    return [index[name] for name in names], class_names


def read_labels_csv(path: Path) -> dict[str, str]:
    """`file,label` rows -> {relative file: label text}. The header row is optional."""
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    rows = [[cell.strip() for cell in row] for row in rows if any(cell.strip() for cell in row)]
    if rows and [cell.lower() for cell in rows[0][:2]] == ["file", "label"]:
        rows = rows[1:]
    mapping: dict[str, str] = {}
    for line_no, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0] or not row[1]:
            raise InvalidDataError(
                f"{path}: row {line_no} is {row!r}; expected two columns `file,label`",
                hint="write one `file,label` row per image, e.g. `cat1.jpg,281`",
            )
        mapping[Path(row[0]).as_posix()] = row[1]
    return mapping


def _entries_from_labels_csv(root: Path) -> tuple[list[ImageEntry], tuple[str, ...] | None]:
    """labels.csv decides which files belong to the dataset; unlisted images are left out."""
    csv_path = root / LABELS_CSV
    mapping = read_labels_csv(csv_path)
    missing = [name for name in mapping if not (root / name).is_file()]
    if missing:
        raise InvalidDataError(
            f"{csv_path} lists {len(missing)} file(s) that are not in {root} (first: {missing[0]})",
            hint="fix the file names in labels.csv (they are relative to the folder) or add the images",
        )
    unlisted = [p for p in list_images(root, recursive=True) if p.relative_to(root).as_posix() not in mapping]
    if unlisted:
        logger.warning(
            "%s: %d image(s) not listed in labels.csv are ignored (first: %s)",
            root, len(unlisted), unlisted[0].relative_to(root).as_posix(),
        )
    files = sorted(mapping)
    labels, class_names = labels_from_names([mapping[f] for f in files])
    return [ImageEntry(root / f, f, label) for f, label in zip(files, labels, strict=True)], class_names


def _probe_all(candidates: list[ImageEntry], limit: int | None) -> tuple[list[ImageEntry], list[str]]:
    good: list[ImageEntry] = []
    bad: list[str] = []
    for entry in candidates:
        if limit is not None and len(good) >= limit:
            break
        try:
            load_image(entry.path, draft=True)
        except UndecodableImageError as error:
            logger.warning("skipping image that does not decode: %s", error.message)
            bad.append(str(entry.path))
            continue
        good.append(entry)
    return good, bad


def load_image(path: Path, *, draft: bool = False) -> Image.Image:
    """Decode one file fully into memory, as RGB or L. `draft` lets JPEGs decode at reduced scale
    (for the validity check only: the pixels differ from a full decode).

    Raises UndecodableImageError naming the file for anything Pillow cannot read.
    """
    try:
        with Image.open(path) as image:
            check_pixel_count(image, path)
            if draft:
                image.draft(image.mode, (64, 64))  # no-op for non-JPEG
            image.load()
            return to_rgb_or_l(image)
    except UndecodableImageError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError,
        # DecompressionBombError, struct.error, ... for malformed files; each one means "bad file".
        raise UndecodableImageError(f"{path}: {type(error).__name__}: {error}") from error


def check_pixel_count(image: Image.Image, path: Path | str) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UndecodableImageError(
            f"{path}: {width}x{height} pixels is over trimtab's limit of {MAX_PIXELS} "
            "(a decompression bomb, or an image far larger than a model input)"
        )


def to_rgb_or_l(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (colour) or L (grayscale), keeping what a viewer would show.

    Alpha is dropped, as `Image.convert("RGB")` in common training pipelines does, so calibration
    sees the pixels the model was trained on.
    """
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(image)
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).round().astype(np.uint8))
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    if (mode == "P" and "transparency" in image.info) or mode == "PA":
        # Pillow asks for palette transparency to go through RGBA; otherwise it warns.
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")  # P, CMYK, YCbCr, RGBA, RGBX, ...


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG) -> 8-bit. Pillow's own convert("L") clips at 255 instead of scaling,
    which turns most 16-bit images white; scale 0..65535 to 0..255 instead."""
    values = np.asarray(image).astype(np.float64)
    return Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8))


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Convert to RGB (3) or L (1) for a model's input; grayscale becomes 3 equal channels."""
    image = to_rgb_or_l(image)
    wanted = "RGB" if channels == 3 else "L"
    return image if image.mode == wanted else image.convert(wanted)
