"""Data as `Dataset(source, transform)`: an iterable of samples, batched on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np


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
