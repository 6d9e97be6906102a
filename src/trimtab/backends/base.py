"""The backend lifecycle every runner shares: prepare -> infer* -> close."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from trimtab.errors import InvalidDataError

if TYPE_CHECKING:
    import onnx


class Backend(ABC):
    """Runs one ONNX artifact. Subclasses implement `_prepare`, `_infer`, `_close`.

    The base class owns input checks (names, ranks, dtypes) and timing with a device sync.
    """

    name: ClassVar[str]

    def __init__(self, model: "onnx.ModelProto | str | Path") -> None:
        self.model = model
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._input_meta: dict[str, tuple[list, np.dtype]] = {}
        self._prepared = False

    # lifecycle ---------------------------------------------------------------------------
    def prepare(self) -> "Backend":
        if not self._prepared:
            self._prepare()
            self._prepared = True
        return self

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._prepared:
            self.prepare()
        self._check_feeds(feeds)
        return self._infer(feeds)

    def timed_infer(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """Run once and return (outputs, seconds), synchronising the device before reading the clock."""
        if not self._prepared:
            self.prepare()
        self._check_feeds(feeds)
        start = time.perf_counter()
        outputs = self._infer(feeds)
        self._synchronize()
        return outputs, time.perf_counter() - start

    def layer_precisions(self) -> dict[str, str]:
        """Layer name -> the precision it really ran in, for layers whose kernel the backend chose
        itself (the gpu engine times int8 against float per layer). Empty: every node ran as the
        artifact types it."""
        return {}

    def close(self) -> None:
        if self._prepared:
            self._close()
            self._prepared = False

    def __enter__(self) -> "Backend":
        return self.prepare()

    def __exit__(self, *exc) -> None:
        self.close()

    # for subclasses ----------------------------------------------------------------------
    @abstractmethod
    def _prepare(self) -> None:
        """Load the model; fill input_names, output_names and _input_meta (shape, dtype)."""

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:
        pass

    def _synchronize(self) -> None:
        """Wait for queued device work (GPU backends override)."""

    # checks ------------------------------------------------------------------------------
    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise InvalidDataError(
                f"the model needs inputs {self.input_names}, the data gave {sorted(feeds)}",
                hint="check that the data matches the model (an .npz needs one array per model input)",
            )
        for name, (shape, dtype) in self._input_meta.items():
            array = feeds[name]
            if array.ndim != len(shape):
                raise InvalidDataError(
                    f"input '{name}' has shape {list(array.shape)}; the model expects {shape}",
                    hint="check the preprocessing (image size, channels) against the model's input",
                )
            for axis, (got, want) in enumerate(zip(array.shape, shape)):
                if isinstance(want, int) and want > 0 and got != want:
                    raise InvalidDataError(
                        f"input '{name}' has shape {list(array.shape)}; the model expects {shape} "
                        f"(axis {axis}: {got} != {want})",
                        hint="check the preprocessing (image size, channels) against the model's input",
                    )
            if array.dtype != dtype:
                raise InvalidDataError(
                    f"input '{name}' has dtype {array.dtype}; the model expects {np.dtype(dtype)}",
                    hint="convert the data or the transform's output to the model's input type",
                )
