"""Coverage check: does the calibration data look like the data the model will see?

Two views, from one streaming pass of the validation data through the model (intermediate
tensors exposed, each batch folded into histograms of |x| and dropped):

- inputs: per float model input, mean, std and percentiles of the calibration vs the validation
  values (needs `calibration_data`). The means are compared through the per-sample means m_i:
      shift_se  = |mean_c - mean_v| / sqrt(var(m^c) / n_c + var(m^v) / n_v)   (Welch's t)
      shift_std = |mean_c - mean_v| / std_v                                    (effect size)
      std_ratio = std_c / std_v
  An input is flagged when shift_se > `mean_shift_se` and shift_std > `mean_shift_std` (both: a
  large set makes any tiny shift significant), or when std_ratio is beyond `std_ratio` either way.
- layers: per calibrated tensor, the fraction of validation values with |x| > the calibrated amax
  (`outside`, what symmetric int8 clips) and outside the uint8 range [lo, hi] of
  `TensorRange.asymmetric()` (`outside_asymmetric`: a shift the symmetric view misses, e.g. dark
  images normalised to [-2.1, -1.3] have a large |x| but no positive x). Their larger, less the
  fraction the calibration itself clipped at amax (0 when only ranges are known), is `excess`.
  A layer is uncovered when its excess is above
      limit = max(layer_outside, 2 / (n_calib + 1))
  where 1 / (n + 1) is the chance that a new sample exceeds the largest of n exchangeable
  calibration samples: a small calibration set leaves pooled tensors (a few values per sample)
  a few percent "outside" by chance alone. The check warns when a model input is uncovered, or
  when more than `layer_share` of the layers, and at least two, are uncovered (one pooled tensor
  of a small model can cross the limit by chance; a shift in the data moves several).

`CoverageResult` is truthy when it has no warnings.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trimtab._io import atomic_write_json
from trimtab.calibrate.cache import Calibration
from trimtab.calibrate.collect import DatasetLike, Progress, quantizable_tensors
from trimtab.calibrate.histogram import SENTINEL_ABS, HistogramSet
from trimtab.calibrate.methods import DEFAULT_PERCENTILE, amax_for
from trimtab.calibrate.ranges import TensorRange
from trimtab.errors import CalibrationError
from trimtab.explain.diagnostics import fraction_above
from trimtab.options import CalibrationMethod

if TYPE_CHECKING:
    from trimtab.load.model import Model

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PERCENTILES = (1.0, 5.0, 50.0, 95.0, 99.0)
VALUES_PER_SAMPLE = 1024  # values kept per sample (evenly strided) for the percentiles
MAX_KEPT_SAMPLES = 4096  # samples whose values feed the percentiles; mean/std use every sample

CalibrationLike = HistogramSet | Calibration | Mapping[str, TensorRange]


@dataclass(frozen=True)
class CoverageThresholds:
    """When the coverage check warns (see the module docstring)."""

    mean_shift_se: float = 4.0
    mean_shift_std: float = 0.25
    std_ratio: float = 1.5
    layer_outside: float = 0.01
    layer_share: float = 0.10

    def __post_init__(self) -> None:
        for name in ("mean_shift_se", "mean_shift_std"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.std_ratio >= 1.0:
            raise ValueError(f"std_ratio must be >= 1 (a ratio either way), got {self.std_ratio}")
        for name in ("layer_outside", "layer_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a fraction in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class InputSummary:
    """One data set's statistics of one input: over all values, and the spread of per-sample means."""

    samples: int
    mean: float
    std: float
    sample_mean_std: float
    percentiles: dict[str, float]


@dataclass(frozen=True)
class InputComparison:
    name: str
    calibration: InputSummary
    validation: InputSummary
    shift_se: float | None  # None when either set has fewer than 2 samples
    shift_std: float
    std_ratio: float

    @classmethod
    def from_dict(cls, data: dict) -> InputComparison:
        return cls(
            name=data["name"],
            calibration=InputSummary(**data["calibration"]),
            validation=InputSummary(**data["validation"]),
            shift_se=None if data["shift_se"] is None else float(data["shift_se"]),
            shift_std=float(data["shift_std"]),
            std_ratio=float(data["std_ratio"]),
        )


@dataclass(frozen=True)
class LayerCoverage:
    name: str
    calibrated_amax: float
    calibration_clipped: float
    validation_amax: float
    outside: float
    outside_asymmetric: float
    excess: float


@dataclass
class CoverageResult:
    """Input statistics, per-layer coverage and the warnings they raise; truthy with no warning."""

    inputs: list[InputComparison]
    layers: list[LayerCoverage]
    warnings: list[str]
    thresholds: CoverageThresholds = field(default_factory=CoverageThresholds)
    calibration_samples: int = 0
    validation_samples: int = 0

    def __bool__(self) -> bool:
        return not self.warnings

    @property
    def layer_limit(self) -> float:
        """The excess above which a layer is uncovered (see the module docstring)."""
        chance = 2.0 / (self.calibration_samples + 1) if self.calibration_samples else 0.0
        return max(self.thresholds.layer_outside, chance)

    def uncovered(self) -> list[LayerCoverage]:
        """Layers whose excess is above `layer_limit`, worst first."""
        bad = [layer for layer in self.layers if layer.excess > self.layer_limit]
        return sorted(bad, key=lambda layer: -layer.excess)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": "coverage",
            "passed": bool(self),
            "layer_limit": self.layer_limit,
            "warnings": list(self.warnings),
            "thresholds": asdict(self.thresholds),
            "calibration_samples": self.calibration_samples,
            "validation_samples": self.validation_samples,
            "inputs": [asdict(i) for i in self.inputs],
            "layers": [asdict(layer) for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict) -> CoverageResult:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"coverage format {data.get('format_version')}; this trimtab reads {FORMAT_VERSION}")
        return cls(
            inputs=[InputComparison.from_dict(i) for i in data["inputs"]],
            layers=[LayerCoverage(**layer) for layer in data["layers"]],
            warnings=list(data["warnings"]),
            thresholds=CoverageThresholds(**data["thresholds"]),
            calibration_samples=int(data.get("calibration_samples", 0)),
            validation_samples=int(data.get("validation_samples", 0)),
        )

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> CoverageResult:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def coverage(
    model: Model,
    calibration: CalibrationLike,
    validation: DatasetLike,
    *,
    calibration_data: DatasetLike | None = None,
    method: CalibrationMethod | str = CalibrationMethod.MINMAX,
    thresholds: CoverageThresholds | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> CoverageResult:
    """Compare the calibration of `model` with `validation` (see the module docstring).

    `calibration` is the calibration's HistogramSet (amax by `method`, percentile 99.99; default minmax: anything
    beyond the largest calibration value is uncovered), a `Calibration`, or {tensor: TensorRange}.
    `calibration_data` (the calibration Dataset) enables the input statistics; without it only
    the layers are compared (the model inputs are among them).
    """
    thresholds = thresholds or CoverageThresholds()
    ranges, clipped = _calibrated_ranges(calibration, method)
    names = _tensors_to_check(model, ranges)
    bounds = {name: ranges[name].asymmetric() for name in names}
    val_hists, val_inputs, outside = _validation_pass(model, validation, bounds, batch_size, progress)
    layers = [_layer(name, ranges[name], clipped.get(name, 0.0), val_hists, outside[name])
              for name in names if name in val_hists]
    inputs, calib_samples = [], 0
    if calibration_data is not None:
        calib_inputs = _input_stats(calibration_data, list(val_inputs), batch_size)
        calib_samples = next((acc.samples for acc in calib_inputs.values()), 0)
        inputs = [_compare(name, calib_inputs[name].summary(), val_inputs[name].summary()) for name in val_inputs]
    else:
        log.info("no calibration data given: coverage compares layer ranges only, not input statistics")
    result = CoverageResult(
        inputs=inputs,
        layers=layers,
        warnings=[],
        thresholds=thresholds,
        calibration_samples=calib_samples or _calibration_samples(calibration),
        validation_samples=int(val_hists.meta.get("num_samples", 0)),
    )
    result.warnings = _warnings(result, {v.name for v in model.proto.graph.input})
    for sentence in result.warnings:
        log.warning("coverage: %s", sentence)
    return result


# calibration side ------------------------------------------------------------------------------
def _calibrated_ranges(calibration: CalibrationLike, method) -> tuple[dict[str, TensorRange], dict[str, float]]:
    """{tensor: range} and {tensor: fraction the calibration clipped at its amax} (when known)."""
    if isinstance(calibration, HistogramSet):
        ranges, clipped = {}, {}
        for hist in calibration.values():
            if hist.count:
                amax = float(amax_for(hist, method, DEFAULT_PERCENTILE))
                ranges[hist.name] = TensorRange(amax=amax, min=hist.min, max=hist.max)
                clipped[hist.name] = fraction_above(hist, amax)
        return ranges, clipped
    if isinstance(calibration, Calibration):
        return dict(calibration.ranges), dict(calibration.clipped)
    if isinstance(calibration, Mapping):
        return {str(n): r for n, r in calibration.items()}, {}
    raise TypeError(f"calibration must be a HistogramSet, a Calibration or a dict of TensorRange, "
                    f"got {type(calibration).__name__}")


def _calibration_samples(calibration: CalibrationLike) -> int:
    if isinstance(calibration, HistogramSet):
        return int(calibration.meta.get("num_samples", 0))
    return int(getattr(calibration, "num_samples", 0))


def _tensors_to_check(model: Model, amax: Mapping[str, TensorRange]) -> list[str]:
    available = set(quantizable_tensors(model.proto))
    names = [name for name in amax if name in available]
    missing = [name for name in amax if name not in available]
    if missing:
        log.warning("%d calibrated tensors are not activations of %s; ignored: %s", len(missing), model.name,
                    missing[:5])
    if not names:
        raise CalibrationError(
            f"none of the {len(amax)} calibrated tensors is an activation of model {model.name}",
            hint="pass the calibration made for this model (same ONNX file)",
        )
    return names


# validation pass --------------------------------------------------------------------------------
def _validation_pass(model, dataset, bounds: dict[str, tuple[float, float]], batch_size, progress):
    """One pass: histograms of the tensors named in `bounds`, the fraction of their values outside
    (lo, hi), and statistics of the float model inputs."""
    from trimtab.backends.ort_cpu import OrtCpuBackend

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    graph_inputs = {v.name for v in model.proto.graph.input}
    hists = HistogramSet(meta={"model_sha256": model.sha256})
    inputs: dict[str, _InputAccumulator] = {}
    names = list(bounds)
    beyond = dict.fromkeys(names, 0)
    done, total = 0, len(dataset)
    backend = OrtCpuBackend(model.proto, optimize=False, extra_outputs=[n for n in names if n not in graph_inputs])
    with backend:
        for batch in dataset.batches(batch_size):
            _add_inputs(inputs, batch.inputs)
            outputs = backend.infer(batch.inputs)
            for name in names:
                array = batch.inputs[name] if name in batch.inputs else outputs.pop(name, None)
                if array is not None and array.dtype == np.float32:
                    hists.update(name, array, batch.sources)
                    lo, hi = bounds[name]
                    beyond[name] += _count_outside(array, lo, hi)
            del outputs
            done += len(batch)
            if progress is not None:
                progress(done, total)
    if done == 0:
        raise CalibrationError("the validation data gave no samples", hint="point the validation data at real inputs")
    hists.meta["num_samples"] = done
    return hists, inputs, beyond


def _count_outside(array: np.ndarray, lo: float, hi: float) -> int:
    """Values below lo or above hi, sentinels (|x| >= 1e30, e.g. masks) left out as in the histograms."""
    low = (array < lo) & (array > -SENTINEL_ABS)
    high = (array > hi) & (array < SENTINEL_ABS)
    return int(np.count_nonzero(low)) + int(np.count_nonzero(high))


def _layer(name: str, calibrated: TensorRange, clipped: float, hists: HistogramSet, beyond: int) -> LayerCoverage:
    hist = hists[name]
    outside = fraction_above(hist, calibrated.amax)
    outside_asymmetric = beyond / hist.count if hist.count else 0.0
    return LayerCoverage(
        name=name,
        calibrated_amax=float(calibrated.amax),
        calibration_clipped=float(clipped),
        validation_amax=float(hist.amax_observed),
        outside=float(outside),
        outside_asymmetric=float(outside_asymmetric),
        excess=float(max(max(outside, outside_asymmetric) - clipped, 0.0)),
    )


# input statistics -------------------------------------------------------------------------------
class _InputAccumulator:
    """Streaming sums for mean/std, per-sample means, and a strided subsample for percentiles."""

    def __init__(self) -> None:
        self.total = 0.0
        self.total_sq = 0.0
        self.count = 0
        self.sample_means: list[float] = []
        self.kept: list[np.ndarray] = []

    @property
    def samples(self) -> int:
        return len(self.sample_means)

    def add(self, batch: np.ndarray) -> None:
        rows = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
        self.total += float(rows.sum())
        self.total_sq += float(np.square(rows).sum())
        self.count += rows.size
        self.sample_means.extend(rows.mean(axis=1).tolist())
        if len(self.kept) < MAX_KEPT_SAMPLES:
            stride = max(1, rows.shape[1] // VALUES_PER_SAMPLE)
            self.kept.extend(row[::stride].astype(np.float32) for row in rows)

    def summary(self) -> InputSummary:
        mean = self.total / self.count if self.count else 0.0
        std = math.sqrt(max(self.total_sq / self.count - mean * mean, 0.0)) if self.count else 0.0
        spread = float(np.std(self.sample_means, ddof=1)) if self.samples > 1 else 0.0
        values = np.concatenate(self.kept) if self.kept else np.zeros(1, np.float32)
        cuts = np.percentile(values, PERCENTILES)
        return InputSummary(
            samples=self.samples,
            mean=float(mean),
            std=float(std),
            sample_mean_std=spread,
            percentiles={f"p{p:g}": float(v) for p, v in zip(PERCENTILES, cuts)},
        )


def _add_inputs(accumulators: dict[str, _InputAccumulator], inputs: Mapping[str, np.ndarray]) -> None:
    for name, array in inputs.items():
        if np.asarray(array).dtype.kind == "f" and np.ndim(array) >= 1 and len(array):
            accumulators.setdefault(name, _InputAccumulator()).add(array)


def _input_stats(dataset: DatasetLike, names: list[str], batch_size: int) -> dict[str, _InputAccumulator]:
    accumulators: dict[str, _InputAccumulator] = {}
    for batch in dataset.batches(batch_size):
        _add_inputs(accumulators, {n: batch.inputs[n] for n in names if n in batch.inputs})
    missing = [name for name in names if name not in accumulators]
    if missing:
        raise CalibrationError(
            f"the calibration data has no float values for model inputs {missing}",
            hint="pass the same Dataset that calibration used",
        )
    return accumulators


def _compare(name: str, calib: InputSummary, val: InputSummary) -> InputComparison:
    diff = abs(calib.mean - val.mean)
    shift_se = None
    if calib.samples > 1 and val.samples > 1:
        se = math.sqrt(calib.sample_mean_std**2 / calib.samples + val.sample_mean_std**2 / val.samples)
        shift_se = diff / max(se, 1e-12 * (1.0 + abs(val.mean)))
    return InputComparison(
        name=name,
        calibration=calib,
        validation=val,
        shift_se=shift_se,
        shift_std=diff / max(val.std, 1e-12),
        std_ratio=calib.std / max(val.std, 1e-12),
    )


# warnings ---------------------------------------------------------------------------------------
def _warnings(result: CoverageResult, inputs: set[str]) -> list[str]:
    """Plain sentences, one per finding; `inputs` are the model's graph input names."""
    limits = result.thresholds
    sentences = []
    for item in result.inputs:
        shifted = item.shift_std > limits.mean_shift_std and (
            item.shift_se is None or item.shift_se > limits.mean_shift_se
        )
        if shifted:
            how = f"{item.shift_se:.1f} standard errors, " if item.shift_se is not None else ""
            sentences.append(
                f"Input '{item.name}' has mean {item.calibration.mean:.3g} in the calibration data and "
                f"{item.validation.mean:.3g} in the validation data ({how}{item.shift_std:.2f} validation "
                f"standard deviations apart), so the calibration data does not represent the real inputs."
            )
        if not 1.0 / limits.std_ratio <= item.std_ratio <= limits.std_ratio:
            sentences.append(
                f"Input '{item.name}' has standard deviation {item.calibration.std:.3g} in the calibration "
                f"data and {item.validation.std:.3g} in the validation data (ratio {item.std_ratio:.2f}), "
                f"so the calibration data does not represent the spread of the real inputs."
            )
    uncovered = result.uncovered()
    for layer in uncovered:
        if layer.name in inputs:
            sentences.append(
                f"Input '{layer.name}' has {100 * layer.excess:.1f}% of its validation values outside the range "
                f"calibrated for it (amax {layer.calibrated_amax:.3g}), so the calibration data does not "
                f"cover the real inputs."
            )
    if len(uncovered) >= 2 and len(uncovered) > limits.layer_share * len(result.layers):
        worst = ", ".join(f"'{layer.name}' {100 * layer.excess:.1f}%" for layer in uncovered[:3])
        sentences.append(
            f"{len(uncovered)} of {len(result.layers)} layers have more than {100 * result.layer_limit:.3g}% "
            f"of their validation activations outside the calibrated range (worst: {worst}); "
            f"calibrate on data that looks like the real inputs."
        )
    return sentences
