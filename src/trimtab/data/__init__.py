"""data stage: `Dataset(source, transform)` over image folders, .npz files, text files and lists.

    from trimtab.data import Dataset, ImageTransform
    calib = Dataset("photos/", ImageTransform.preset("effnet-lite"), limit=200)
    for batch in calib.batches(32): ...
"""

from __future__ import annotations

from pathlib import Path

from trimtab.data.dataset import Batch, Dataset, Sample, collate
from trimtab.data.transforms import (
    PRESETS,
    ImageTransform,
    Interpolation,
    Layout,
    NpzTransform,
    TextTransform,
    Transform,
    transform_from_options,
)


def open_dataset(
    path: str | Path,
    transform: Transform | str | None = None,
    *,
    name: str | None = None,
    limit: int | None = None,
) -> Dataset:
    """Dataset(path, transform), where `transform` may also be an image preset name ("imagenet")."""
    if isinstance(transform, str):
        transform = ImageTransform.preset(transform)
    return Dataset(path, transform, name=name, limit=limit)


__all__ = [
    "PRESETS",
    "Batch",
    "Dataset",
    "ImageTransform",
    "Interpolation",
    "Layout",
    "NpzTransform",
    "Sample",
    "TextTransform",
    "Transform",
    "collate",
    "open_dataset",
    "transform_from_options",
]
