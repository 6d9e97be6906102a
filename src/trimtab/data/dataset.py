"""Data as `Dataset(source, transform)`: an iterable of samples, batched on demand.

    Dataset("photos/", ImageTransform.preset("imagenet"))     image folder (labelled by sub-folder)
    Dataset("calib.npz")                                      one array per model input (+ labels)
    Dataset("reviews.txt", TextTransform(tokenizer))          one line per sample, __label__X prefix
    Dataset([Sample(...), ...]) / Dataset([(image, 3), ...])  in memory

Files are read while iterating, one item at a time, so a dataset never holds all its images.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trimtab.data import sources
from trimtab.data.transforms import Transform, transform_identity
from trimtab.errors import InvalidDataError


@dataclass
class Sample:
    """One example: model inputs without a batch axis, and an optional label.

    `inputs` maps graph-input names to arrays. A transform may produce them from a raw
    source item (an image, a line of text). `label` is an int class index (classification)
    or None. `source` names where the sample came from (file path, line number) for errors.
    """

    inputs: dict[str, np.ndarray]
    label: int | None = None
    source: str = ""


@dataclass
class Batch:
    """Samples stacked along a new leading axis (text is padded to the longest sample)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None  # int64 [N], or None when any sample is unlabelled
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


class Dataset:
    """An iterable of `Sample`s from a folder, file or list, with the transform applied.

    `limit` keeps only the first `limit` items (in the source's sorted order). Iterating twice
    yields the same samples in the same order.
    """

    def __init__(
        self,
        source: Any,
        transform: Transform | None = None,
        *,
        name: str | None = None,
        limit: int | None = None,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of samples or None, got {limit}")
        opened = sources.open_source(source, limit)
        self._init(opened, transform, name, limit)

    def _init(self, source: sources.Source, transform: Transform | None, name: str | None,
              limit: int | None) -> None:
        is_samples = getattr(source, "samples", False)
        if is_samples and transform is not None:
            raise ValueError("a list of Samples is already model inputs; pass transform=None")
        if transform is None:
            transform = source.default_transform()
        if transform is None and not is_samples:
            raise ValueError(_missing_transform_message(source))
        self._source = source
        self.transform = transform
        self.name = name or source.name
        self.limit = limit

    @property
    def kind(self) -> str:
        """Where the data comes from: "images", "npz", "text" or "memory"."""
        return self._source.kind

    @property
    def labelled(self) -> bool:
        """True when every sample has a label (so batches carry `labels`)."""
        return self._source.labelled

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Index -> class name when labels came from names (folders, labels.csv, __label__pos)."""
        return self._source.class_names

    def __len__(self) -> int:
        return len(self._source)

    def __iter__(self) -> Iterator[Sample]:
        for item in self._source:
            yield self._to_sample(item)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, kind={self.kind!r}, samples={len(self)}, "
                f"labelled={self.labelled})")

    def _to_sample(self, item: sources.RawItem) -> Sample:
        if isinstance(item.raw, Sample):
            return item.raw
        try:
            inputs = self.transform(item.raw)
        except Exception as error:
            error.add_note(f"while transforming {item.source}")
            raise
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"transform {type(self.transform).__name__} returned {type(inputs).__name__} for "
                f"{item.source}; it must return a dict of input name -> array"
            )
        return Sample({name: np.asarray(value) for name, value in inputs.items()}, item.label, item.source)

    def take(self, n: int) -> Dataset:
        """A dataset of the first `n` samples (all of them when there are fewer)."""
        if n < 1:
            raise ValueError(f"take(n) needs n >= 1, got {n}")
        subset = Dataset.__new__(Dataset)
        limit = n if self.limit is None else min(n, self.limit)
        subset._init(self._source.head(n), self.transform, self.name, limit)
        return subset

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Consecutive samples stacked into batches; the last one may be smaller."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pad_values = getattr(self.transform, "pad_values", None) or {}
        chunk: list[Sample] = []
        for sample in self:
            chunk.append(sample)
            if len(chunk) == batch_size:
                yield collate(chunk, pad_values)
                chunk = []
        if chunk:
            yield collate(chunk, pad_values)

    def fingerprint(self) -> str:
        """sha256 (hex) over the content of every sample's source (file bytes, arrays, text),
        the labels, and the transform's identity. Stable across machines and folder moves."""
        digest = sources.new_digest()
        digest.update(self.kind.encode())
        self._source.update_digest(digest)
        sources.update_digest_with(digest, transform_identity(self.transform))
        return digest.hexdigest()


def _missing_transform_message(source: sources.Source) -> str:
    if source.kind == "images":
        return ("a Dataset of images needs a transform naming the model input and its preprocessing, "
                "e.g. ImageTransform.preset('imagenet', input_name='input')")
    if source.kind == "text":
        return "a Dataset of text needs a transform with a tokenizer, e.g. TextTransform(tokenizer)"
    return "these raw items need a transform that turns each one into a dict of input arrays"


def collate(samples: Iterable[Sample], pad_values: Mapping[str, int] | None = None) -> Batch:
    """Stack samples into a Batch. Integer inputs of different lengths (token ids, masks) are
    padded at the end to the longest in the batch with `pad_values[name]` (default 0), so padded
    positions have attention mask 0. Float inputs must already share one shape."""
    samples = list(samples)
    names = list(samples[0].inputs)
    for sample in samples:
        if sorted(sample.inputs) != sorted(names):
            raise InvalidDataError(
                f"{sample.source} has inputs {sorted(sample.inputs)}; "
                f"{samples[0].source} has {sorted(names)}",
                hint="every sample must provide the same model inputs",
            )
    pad_values = pad_values or {}
    inputs = {name: _stack(name, samples, pad_values.get(name, 0)) for name in names}
    labels = None
    if all(sample.label is not None for sample in samples):
        labels = np.asarray([sample.label for sample in samples], dtype=np.int64)
    return Batch(inputs, labels, [sample.source for sample in samples])


def _stack(name: str, samples: list[Sample], pad_value: int) -> np.ndarray:
    arrays = [sample.inputs[name] for sample in samples]
    dtypes = {array.dtype for array in arrays}
    if len(dtypes) > 1:
        raise InvalidDataError(
            f"input '{name}' has mixed dtypes {sorted(map(str, dtypes))} within one batch",
            hint="make the transform return one dtype for every sample",
        )
    shapes = {array.shape for array in arrays}
    if len(shapes) == 1:
        return np.stack(arrays)
    ranks = {len(shape) for shape in shapes}
    if arrays[0].dtype.kind not in "iub" or len(ranks) > 1:
        example = {array.shape: sample.source for array, sample in zip(arrays, samples, strict=True)}
        listed = "; ".join(f"{shape} ({where})" for shape, where in list(example.items())[:3])
        raise InvalidDataError(
            f"input '{name}' has different shapes within one batch: {listed}",
            hint="resize/crop images to one size (ImageTransform resize and crop), or use batch size 1",
        )
    return _pad_stack(arrays, pad_value)


def _pad_stack(arrays: list[np.ndarray], pad_value: int) -> np.ndarray:
    """Pad each array at the end of every axis up to the largest size, then stack."""
    target = tuple(max(sizes) for sizes in zip(*(array.shape for array in arrays), strict=True))
    out = np.full((len(arrays), *target), pad_value, dtype=arrays[0].dtype)
    for i, array in enumerate(arrays):
        out[(i, *(slice(0, size) for size in array.shape))] = array
    return out
