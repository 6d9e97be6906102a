"""Where raw items come from: an image folder, an .npz file, a text file, or a Python list.

Each source knows its length, whether it is labelled, how to stream its raw items (lazily: a
file is read while iterating), how to cut itself to its first n items, and how to feed its
content into a hash for Dataset.fingerprint(). Dataset applies the transform on top.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

from trimtab.data import images, npz, text
from trimtab.data.transforms import NpzTransform, Transform
from trimtab.errors import InvalidDataError

logger = logging.getLogger(__name__)

_FILE_CHUNK = 1 << 20


class RawItem(NamedTuple):
    raw: Any  # PIL image, str, dict of arrays, or a ready Sample
    label: int | None
    source: str  # file path, "file.txt:12", "data.npz[3]", "memory[5]"


class Source(Protocol):
    kind: str  # "images", "npz", "text", "memory"
    name: str
    labelled: bool
    class_names: tuple[str, ...] | None

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[RawItem]: ...
    def head(self, n: int) -> Source: ...
    def update_digest(self, digest: Any) -> None: ...
    def default_transform(self) -> Transform | None: ...


def open_source(source: Any, limit: int | None) -> Source:
    """Pick the source type from what `source` is: a path (folder / .npz / text) or a list."""
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), limit)
    if isinstance(source, (bytes, Mapping)) or not isinstance(source, Iterable):
        raise TypeError(
            f"Dataset source must be a path or a list of samples/raw items, got {type(source).__name__}"
        )
    return MemorySource.from_items(list(source)).head(limit)


def _open_path(path: Path, limit: int | None) -> Source:
    if path.is_dir():
        return ImageFolderSource(images.scan_image_folder(path, limit=limit))
    if not path.exists():
        raise InvalidDataError(
            f"data path {path} does not exist",
            hint="pass a folder of images, a .npz file, or a .txt file with one sample per line",
        )
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return NpzSource.open(path).head(limit)
    if suffix in text.TEXT_SUFFIXES:
        return TextSource.open(path, limit)
    raise InvalidDataError(
        f"cannot read data from {path}: unsupported file type {suffix or '(no suffix)'}",
        hint=f"use a folder of images, a .npz file, or a text file ({', '.join(sorted(text.TEXT_SUFFIXES))})",
    )


def _head(n: int | None, length: int) -> int:
    return length if n is None else max(0, min(n, length))


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as stream:
        while chunk := stream.read(_FILE_CHUNK):
            digest.update(chunk)


def update_digest_with(digest: Any, value: Any) -> None:
    """Feed a value into a hash unambiguously (type tag and length before each piece of content)."""

    def put(tag: str, payload: bytes) -> None:
        digest.update(f"{tag}:{len(payload)}:".encode())
        digest.update(payload)

    if value is None or isinstance(value, (bool, int, float)):
        put("scalar", repr(value).encode())
    elif isinstance(value, str):
        put("str", value.encode("utf-8"))
    elif isinstance(value, bytes):
        put("bytes", value)
    elif isinstance(value, np.ndarray):
        put("array", f"{value.dtype.str}{value.shape}".encode())
        put("data", np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Image.Image):
        put("image", f"{value.mode}{value.size}".encode())
        put("data", value.tobytes())
    elif isinstance(value, Mapping):
        put("map", str(len(value)).encode())
        for key in sorted(value):
            update_digest_with(digest, key)
            update_digest_with(digest, value[key])
    elif dataclasses.is_dataclass(value):
        put("dataclass", type(value).__name__.encode())
        for f in dataclasses.fields(value):
            update_digest_with(digest, getattr(value, f.name))
    elif isinstance(value, (list, tuple)):
        put("seq", str(len(value)).encode())
        for item in value:
            update_digest_with(digest, item)
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__}; use arrays, images, text or Samples")


@dataclass(frozen=True)
class ImageFolderSource:
    index: images.ImageFolderIndex
    kind: str = "images"

    @property
    def name(self) -> str:
        return self.index.root.name

    @property
    def labelled(self) -> bool:
        return all(entry.label is not None for entry in self.index.entries)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.index.class_names

    def __len__(self) -> int:
        return len(self.index.entries)

    def __iter__(self) -> Iterator[RawItem]:
        yielded = 0
        for entry in self.index.entries:
            try:
                image = images.load_image(entry.path)
            except images.UndecodableImageError as error:
                # The file decoded during the scan, so it changed or vanished since then.
                logger.warning("skipping image that does not decode: %s", error.message)
                continue
            yielded += 1
            yield RawItem(image, entry.label, str(entry.path))
        if yielded == 0 and self.index.entries:
            raise InvalidDataError(
                f"none of the images in {self.index.root} could be decoded any more",
                hint="the files changed after the dataset was opened; check the folder",
            )

    def head(self, n: int | None) -> ImageFolderSource:
        entries = self.index.entries[: _head(n, len(self))]
        return dataclasses.replace(self, index=dataclasses.replace(self.index, entries=entries))

    def update_digest(self, digest: Any) -> None:
        update_digest_with(digest, self.class_names)
        for entry in self.index.entries:
            update_digest_with(digest, entry.relative)
            update_digest_with(digest, entry.label)
            _hash_file(digest, entry.path)

    def default_transform(self) -> Transform | None:
        return None  # the model's input name and preprocessing must be chosen, not guessed


@dataclass(frozen=True)
class NpzSource:
    index: npz.NpzIndex
    length: int
    kind: str = "npz"

    @classmethod
    def open(cls, path: Path) -> NpzSource:
        index = npz.read_npz_index(path)
        return cls(index, index.length)

    @property
    def name(self) -> str:
        return self.index.path.stem

    @property
    def labelled(self) -> bool:
        return self.index.has_labels

    @property
    def class_names(self) -> None:
        return None

    def __len__(self) -> int:
        return self.length

    def _arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        arrays = npz.load_npz(self.index.path)
        labels = arrays.pop(npz.LABELS_KEY, None)
        arrays = {name: array[: self.length] for name, array in arrays.items()}
        return arrays, (None if labels is None else labels[: self.length])

    def __iter__(self) -> Iterator[RawItem]:
        arrays, labels = self._arrays()
        for i in range(self.length):
            label = None if labels is None else int(labels[i])
            row = {name: array[i] for name, array in arrays.items()}
            yield RawItem(row, label, f"{self.index.path}[{i}]")

    def head(self, n: int | None) -> NpzSource:
        return dataclasses.replace(self, length=_head(n, self.length))

    def update_digest(self, digest: Any) -> None:
        arrays, labels = self._arrays()
        update_digest_with(digest, arrays)
        update_digest_with(digest, labels)

    def default_transform(self) -> Transform | None:
        return NpzTransform()


@dataclass(frozen=True)
class TextSource:
    path: Path
    encoding: str
    length: int
    label_index: Mapping[str, int] | None  # raw label text -> class index
    class_names: tuple[str, ...] | None
    labelled: bool
    kind: str = "text"

    @classmethod
    def open(cls, path: Path, limit: int | None) -> TextSource:
        """One pass over the file to count lines and collect labels; no text is kept.

        The label mapping covers the whole file, so `limit` never changes which index a class
        name gets.
        """
        encoding = text.detect_encoding(path)
        raw_labels: list[str | None] = []
        names: set[str] = set()
        for line in text.iter_text_lines(path, encoding):
            if limit is None or len(raw_labels) < limit:
                raw_labels.append(line.label)
                if line.truncated:
                    text.warn_truncated(path, line)
            if line.label is not None:
                names.add(line.label)
        if not raw_labels:
            raise InvalidDataError(
                f"text file {path} has no non-blank lines",
                hint="write one sample per line, optionally prefixed with __label__<class>",
            )
        found = [label for label in raw_labels if label is not None]
        if found and len(found) < len(raw_labels):
            logger.warning(
                "%s: %d of %d lines have no __label__ prefix; the dataset is treated as unlabelled",
                path, len(raw_labels) - len(found), len(raw_labels),
            )
        label_index, class_names = _text_label_index(sorted(names))
        return cls(path, encoding, len(raw_labels), label_index, class_names,
                   labelled=len(found) == len(raw_labels))

    @property
    def name(self) -> str:
        return self.path.stem

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[RawItem]:
        for count, line in enumerate(text.iter_text_lines(self.path, self.encoding)):
            if count >= self.length:
                return
            label = None if line.label is None or self.label_index is None else self.label_index[line.label]
            yield RawItem(line.text, label, f"{self.path}:{line.line_no}")

    def head(self, n: int | None) -> TextSource:
        return dataclasses.replace(self, length=_head(n, self.length))

    def update_digest(self, digest: Any) -> None:
        update_digest_with(digest, self.class_names)
        for item in self:
            update_digest_with(digest, item.raw)
            update_digest_with(digest, item.label)

    def default_transform(self) -> Transform | None:
        return None  # text needs a tokenizer: TextTransform(tokenizer, ...)


def _text_label_index(labels: list[str]) -> tuple[dict[str, int] | None, tuple[str, ...] | None]:
    """Integer labels are class indices; names get indices in sorted order (recorded)."""
    if not labels:
        return None, None
    indices, class_names = images.labels_from_names(labels)
    return dict(zip(labels, indices, strict=True)), class_names


@dataclass(frozen=True)
class MemorySource:
    """Items given in Python: ready Samples, raw items, or (raw, label) pairs."""

    items: tuple[RawItem, ...]
    samples: bool  # True when the items are Samples (no transform applies)
    kind: str = "memory"
    name: str = "memory"
    class_names: None = None

    @classmethod
    def from_items(cls, items: list[Any]) -> MemorySource:
        from trimtab.data.dataset import Sample  # dataset imports this module

        if not items:
            raise InvalidDataError("the list of samples is empty", hint="pass at least one sample")
        are_samples = [isinstance(item, Sample) for item in items]
        if any(are_samples) and not all(are_samples):
            raise TypeError("mix of Sample and raw items; pass only Samples or only raw items")
        if all(are_samples):
            raw = [RawItem(s, s.label, s.source or f"memory[{i}]") for i, s in enumerate(items)]
        else:
            raw = [_raw_item(item, i) for i, item in enumerate(items)]
        return cls(tuple(raw), samples=all(are_samples))

    @property
    def labelled(self) -> bool:
        return all(item.label is not None for item in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[RawItem]:
        return iter(self.items)

    def head(self, n: int | None) -> MemorySource:
        return dataclasses.replace(self, items=self.items[: _head(n, len(self))])

    def update_digest(self, digest: Any) -> None:
        for item in self.items:
            # A Sample's `source` is only a note for error messages, not content.
            update_digest_with(digest, item.raw.inputs if self.samples else item.raw)
            update_digest_with(digest, item.label)

    def default_transform(self) -> Transform | None:
        if not self.samples and all(isinstance(item.raw, Mapping) for item in self.items):
            return NpzTransform()  # dicts of arrays already are model inputs
        return None


def _raw_item(item: Any, index: int) -> RawItem:
    """`(raw, label)` pairs carry a label; anything else is an unlabelled raw item."""
    where = f"memory[{index}]"
    if not (isinstance(item, tuple) and len(item) == 2):
        return RawItem(item, None, where)
    raw, label = item
    if label is None:
        return RawItem(raw, None, where)
    if isinstance(label, (int, np.integer)):
        return RawItem(raw, int(label), where)
    raise TypeError(f"{where}: a (raw, label) pair needs an int label or None, got {type(label).__name__}")


def new_digest() -> Any:
    digest = hashlib.sha256()
    digest.update(b"trimtab.data.fingerprint/1")
    return digest
