"""The bundled examples: real models with real data, built on first use and cached.

An `Example` is a small description plus a recipe module (`trimtab.examples.<module>`) that is
imported only when the model or the data is asked for, so listing examples imports neither
torch nor the example packages. A recipe module provides:

    RECIPE: str                                   bump to invalidate cached builds
    build(path: Path) -> None                     write the ONNX model to `path` (atomically)
    calibration_samples(size: int) -> list[Sample]
    validation_samples() -> list[Sample]
    agreement_samples() -> list[Sample]           optional: larger unlabelled set (agreement)
    extra_metrics() -> dict[str, DownstreamMetric]  optional: numbers computed on validation outputs
    dataset_metrics() -> dict[str, DownstreamMetric]  optional: numbers that need their own data
    transform() -> Transform                      optional: raw item (image, text) -> inputs, for
                                                  user data fed to the example's model
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trimtab.errors import InvalidModelError
from trimtab.examples import _cache
from trimtab.options import Task

if TYPE_CHECKING:
    from trimtab.data import Dataset


@dataclass(frozen=True)
class DownstreamMetric:
    """A number the user cares about beyond the task metric (a probe accuracy, a correlation).

    `score(candidate, reference, labels) -> float` takes two `trimtab.measure.evaluate.Outputs`
    (anything with `.values`, rows in dataset order), the same signature as measure's
    `ExtraMetric`. `data` None means: computed on the example's validation outputs, so `score`
    can be passed straight to `evaluate(..., extra_metrics=...)`. Otherwise the caller runs
    the candidate and the fp32 reference on `data` and passes those outputs.
    """

    name: str
    description: str
    score: Callable[[Any, Any, Any], float]
    data: Dataset | None = None

    def __call__(self, candidate: Any, reference: Any, labels: Any = None) -> float:
        return float(self.score(candidate, reference, labels))


@dataclass(frozen=True)
class Example:
    """A bundled example: `example:<name>` wherever a model is accepted."""

    name: str
    description: str
    task: Task
    metric: str  # "top1" | "agreement" | "cosine": the metric the budget applies to
    calibration_size: int  # default number of calibration samples
    module: str  # recipe module under trimtab.examples, imported on first use

    def __post_init__(self) -> None:
        if self.calibration_size < 1:
            raise ValueError(f"calibration_size must be >= 1, got {self.calibration_size}")
        object.__setattr__(self, "task", Task(self.task))

    def model_path(self) -> Path:
        """The example's ONNX file, built on first use (seconds) and cached; later calls are
        instant. A missing, corrupt or outdated file is rebuilt."""
        recipe = self._recipe()
        return _cache.cached_model(self.name, recipe.RECIPE, recipe.build)

    def cache_dir(self) -> Path:
        return _cache.example_dir(self.name)

    def calibration_data(self, size: int | None = None) -> Dataset:
        """Deterministic calibration samples (`calibration_size` unless `size` is given)."""
        count = self.calibration_size if size is None else size
        if count < 1:
            raise ValueError(f"calibration size must be >= 1, got {count}")
        return _dataset(self._recipe().calibration_samples(count), f"{self.name}:calibration")

    def validation_data(self) -> Dataset:
        """The samples `metric` is measured on (labelled for top1)."""
        return _dataset(self._recipe().validation_samples(), f"{self.name}:validation")

    def agreement_data(self) -> Dataset | None:
        """A larger unlabelled set for agreement with fp32, where the example has one."""
        samples = self._optional("agreement_samples", None)
        return None if samples is None else _dataset(samples, f"{self.name}:agreement")

    def extra_metrics(self) -> dict[str, DownstreamMetric]:
        """Downstream metrics computed on the validation outputs, by name (empty when none).
        Each is a measure `ExtraMetric`: pass the dict to `evaluate(..., extra_metrics=...)`."""
        return self._optional("extra_metrics", {})

    def dataset_metrics(self) -> dict[str, DownstreamMetric]:
        """Downstream metrics that need their own inputs (`metric.data`, e.g. WordSim353 words):
        run the candidate and the fp32 reference on `metric.data`, then call
        `metric(candidate_outputs, reference_outputs)`. Empty when the example has none."""
        return self._optional("dataset_metrics", {})

    def transform(self):
        """The example's preprocessing for raw items (PIL image, text line), so that user data
        (`--calib DIR`) is fed to the example's model exactly as its own data is; None if none."""
        return self._optional("transform", None)

    def _optional(self, hook: str, default: Any) -> Any:
        recipe = self._recipe()
        return getattr(recipe, hook)() if hasattr(recipe, hook) else default

    def _recipe(self) -> ModuleType:
        return importlib.import_module(f"trimtab.examples.{self.module}")


def _dataset(samples: list, name: str) -> Dataset:
    from trimtab.data import Dataset

    return Dataset(samples, name=name)


_EXAMPLES = (
    Example(
        name="effnet-lite0",
        description="EfficientNet-Lite0 (ImageNet weights) on 20 labelled ImageNet photos; "
        "calibrated on photos bundled with scikit-image, scikit-learn and matplotlib",
        task=Task.CLASSIFY,
        metric="top1",
        calibration_size=96,
        module="effnet_lite0",
    ),
    Example(
        name="fashion-cnn",
        description="a small CNN trained on Fashion-MNIST on first use (~15-30 s on 2 cores); "
        "validated on the 10,000 test images",
        task=Task.CLASSIFY,
        metric="top1",
        calibration_size=512,
        module="fashion_cnn",
    ),
    Example(
        name="minilm",
        description="all-MiniLM-L6-v2 sentence encoder; cosine to fp32 on 200 movie-review "
        "sentences, plus polarity probe accuracy and WordSim353 Spearman",
        task=Task.EMBED,
        metric="cosine",
        calibration_size=100,
        module="minilm",
    ),
)
_BY_NAME = {example.name: example for example in _EXAMPLES}


def list_examples() -> list[Example]:
    """All bundled examples, in a stable order."""
    return list(_EXAMPLES)


def get_example(name: str) -> Example:
    """The example called `name` (an `example:` prefix is accepted)."""
    key = name.removeprefix("example:")
    try:
        return _BY_NAME[key]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise InvalidModelError(
            f"unknown example '{key}'; known examples: {known}",
            hint="run `trimtab examples` to list them, and pass MODEL as example:NAME",
        ) from None
