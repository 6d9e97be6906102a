"""Calibration with a cache: histograms once per (model, data), ranges per method from them.

Layout under `cache_dir` (default: $TRIMTAB_CACHE/calibration):

    <model sha256[:16]>-<data fingerprint[:16]>/
        histograms.npz              the HistogramSet; meta holds the full keys
        ranges-<method>.json        one Calibration per method (percentile: ranges-percentile-<p>.json)

Switching method reads the histograms and runs no data through the model. Every file records the
full model sha256 and data fingerprint and is checked on read: a file that claims another key is
stale or corrupt, never silently used (FACTS.md: a stale cache silently gives bad accuracy).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trimtab._io import atomic_write_json, file_lock
from trimtab.calibrate.collect import DatasetLike, Progress, collect_histograms
from trimtab.calibrate.histogram import ChannelRange, HistogramSet, TensorHistogram
from trimtab.calibrate.methods import DEFAULT_PERCENTILE, compute_ranges
from trimtab.calibrate.ranges import TensorRange
from trimtab.errors import CalibrationError
from trimtab.options import CalibrationMethod

if TYPE_CHECKING:
    from trimtab.load.model import Model

log = logging.getLogger(__name__)

HISTOGRAMS_FILE = "histograms.npz"


@dataclass
class Calibration:
    """Ranges for every calibrated tensor, with what produced them.

    `sentinel_tensors` saw values |x| >= 1e30 (masks); `dominated_tensors` are mostly such values
    and should stay float. `clipped[name]` is the fraction of the tensor's values above `amax`.
    `from_cache` tells whether this call reused histograms instead of running the data.
    `channels[name]` holds per-channel min/max of each MatMul/Gemm input (for `trimtab.build.Smoothing`).
    """

    method: str
    ranges: dict[str, TensorRange]
    model_sha256: str
    data_fingerprint: str
    percentile: float | None = None
    num_samples: int = 0
    sentinel_tensors: list[str] = field(default_factory=list)
    dominated_tensors: list[str] = field(default_factory=list)
    clipped: dict[str, float] = field(default_factory=dict)
    from_cache: bool = False
    histograms_path: str | None = None
    channels: dict[str, ChannelRange] = field(default_factory=dict)

    @property
    def float_tensors(self) -> frozenset[str]:
        """Tensors the int8 build must keep float: every tensor in which a sentinel was seen
        (an attention mask's -3.4e38 and whatever adds it), dominated or not. Pass it as
        `build_int8(..., skip_tensors=calibration.float_tensors)`."""
        return frozenset(self.sentinel_tensors) | frozenset(self.dominated_tensors)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "percentile": self.percentile,
            "model_sha256": self.model_sha256,
            "data_fingerprint": self.data_fingerprint,
            "num_samples": self.num_samples,
            "sentinel_tensors": list(self.sentinel_tensors),
            "dominated_tensors": list(self.dominated_tensors),
            "ranges": {name: {"amax": r.amax, "min": r.min, "max": r.max} for name, r in self.ranges.items()},
            "clipped": dict(self.clipped),
            "histograms_path": self.histograms_path,
            "channels": {name: {"min": c.min.tolist(), "max": c.max.tolist()} for name, c in self.channels.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        return cls(
            method=data["method"],
            ranges={name: TensorRange(**r) for name, r in data["ranges"].items()},
            model_sha256=data["model_sha256"],
            data_fingerprint=data["data_fingerprint"],
            percentile=data.get("percentile"),
            num_samples=int(data.get("num_samples", 0)),
            sentinel_tensors=list(data.get("sentinel_tensors", [])),
            dominated_tensors=list(data.get("dominated_tensors", [])),
            clipped={k: float(v) for k, v in data.get("clipped", {}).items()},
            histograms_path=data.get("histograms_path"),
            channels={name: _channel_range(name, c) for name, c in data.get("channels", {}).items()},
        )

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def _channel_range(name: str, data: dict) -> ChannelRange:
    channel_range = ChannelRange(name, len(data["min"]))
    channel_range.min = np.asarray(data["min"], dtype=np.float64)
    channel_range.max = np.asarray(data["max"], dtype=np.float64)
    if channel_range.max.shape != channel_range.min.shape:
        raise ValueError(f"channel range of {name!r}: min and max differ in length")
    return channel_range


def calibrate(
    model: Model,
    dataset: DatasetLike,
    method: CalibrationMethod | str,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    percentile: float = DEFAULT_PERCENTILE,
    progress: Progress | None = None,
    target: str = "ort-cpu",
) -> Calibration:
    """Ranges for `model` on `dataset` by `method`, reusing cached histograms and ranges.

    The cache key is (model.sha256, dataset.fingerprint()); batch_size is not part of it (it moves
    histogram bin edges slightly, not the ranges' meaning), nor is `target`, where the activations
    are computed (`collect_histograms`; it moves them by float rounding only; the histograms'
    meta["collector"] says which one made them). Raises CalibrationError for a cache file
    that claims another key or cannot be read (the message names the file to delete).
    """
    method = CalibrationMethod(method)
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    fingerprint = dataset.fingerprint()
    folder = cache_folder(cache_dir, model.sha256, fingerprint)
    hist_path = folder / HISTOGRAMS_FILE
    # One process at a time per entry: a second one waits, then reads what the first wrote.
    with file_lock(folder):
        hist_set, from_cache = _histograms(model, dataset, hist_path, fingerprint, batch_size, progress, target)
        digest = _file_sha256(hist_path)
        ranges_path = folder / _ranges_file(method, percentile)
        calibration = _cached_ranges(ranges_path, model.sha256, fingerprint, method, percentile, digest)
        if calibration is None:
            calibration = _make_calibration(hist_set, method, percentile, model.sha256, fingerprint)
            calibration.histograms_path = str(hist_path)
            atomic_write_json(ranges_path, {**calibration.to_json(), "histograms_sha256": digest})
    calibration.from_cache = from_cache
    return calibration


def cache_folder(cache_dir: str | Path | None, model_sha256: str, data_fingerprint: str) -> Path:
    """The folder holding one (model, data) pair's histograms and ranges."""
    if cache_dir is None:
        from trimtab._paths import cache_root

        cache_dir = cache_root() / "calibration"
    return Path(cache_dir) / f"{model_sha256[:16]}-{data_fingerprint[:16]}"


def load_histograms(path: str | Path, model_sha256: str, data_fingerprint: str) -> HistogramSet:
    """Read cached histograms, checking that they were made from this model and data."""
    hist_set = HistogramSet.load(path)
    _check_keys(path, hist_set.meta, model_sha256, data_fingerprint)
    return hist_set


def _histograms(model, dataset, path: Path, fingerprint: str, batch_size: int, progress, target: str = "ort-cpu"):
    if path.exists():
        hist_set = load_histograms(path, model.sha256, fingerprint)
        if hist_set.meta.get("channel_stats"):
            log.info("calibration histograms from cache: %s", path)
            return hist_set, True
        log.info("cached histograms %s predate per-channel statistics; recollecting", path)
    hist_set = collect_histograms(model, dataset, batch_size=batch_size, progress=progress, target=target)
    hist_set.meta["data_fingerprint"] = fingerprint
    hist_set.save(path)
    log.info("calibration histograms written: %s", path)
    return hist_set, False


def _cached_ranges(path: Path, model_sha256, fingerprint, method, percentile, digest) -> Calibration | None:
    """The cached Calibration if it exists and was computed from the current histogram file."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):  # a fuzz finding: `7` or `[]` parsed and crashed the key check
            raise _stale(path, f"holds a JSON {type(data).__name__}, not an object")
        _check_keys(path, data, model_sha256, fingerprint)
        calibration = Calibration.from_json(data)
    except CalibrationError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # AttributeError: a list where a dict belongs
        raise _stale(path, f"cannot be read ({exc})") from exc
    if calibration.method != method or (calibration.percentile or None) != _percentile_key(method, percentile):
        raise _stale(path, f"holds method {calibration.method} (percentile {calibration.percentile})")
    if data.get("histograms_sha256") != digest:
        log.info("histograms changed since %s was written; recomputing the ranges", path)
        return None
    return calibration


def _check_keys(path, meta: dict, model_sha256: str, fingerprint: str) -> None:
    found = (meta.get("model_sha256"), meta.get("data_fingerprint"))
    if found != (model_sha256, fingerprint):
        raise _stale(
            path,
            f"belongs to model {str(found[0])[:16]}... and data {str(found[1])[:16]}..., not to model "
            f"{model_sha256[:16]}... and data {fingerprint[:16]}...",
        )


def _stale(path, what: str) -> CalibrationError:
    return CalibrationError(
        f"the calibration cache file {path} {what}: it is stale or corrupt",
        hint=f"delete {path} (or its folder); the next run recalibrates",
    )


def _make_calibration(hist_set, method, percentile, model_sha256, fingerprint) -> Calibration:
    ranges = compute_ranges(hist_set, method, percentile)
    return Calibration(
        method=str(method),
        ranges=ranges,
        model_sha256=model_sha256,
        data_fingerprint=fingerprint,
        percentile=_percentile_key(method, percentile),
        num_samples=int(hist_set.meta.get("num_samples", 0)),
        sentinel_tensors=hist_set.sentinel_tensors(),
        dominated_tensors=hist_set.dominated_tensors(),
        clipped={name: clipped_fraction(hist_set[name], r.amax) for name, r in ranges.items()},
        channels=dict(hist_set.channels),
    )


def clipped_fraction(hist: TensorHistogram, amax: float) -> float:
    """Fraction of the tensor's values above `amax`, from whole bins: sum_{b >= ceil(amax / w)} n_b / N."""
    total = int(hist.counts.sum())
    if total == 0 or hist.range == 0.0:
        return 0.0
    first = int(np.ceil(amax / hist.bin_width - 1e-9))
    return float(hist.counts[first:].sum()) / total


def _percentile_key(method: CalibrationMethod, percentile: float) -> float | None:
    return float(percentile) if method is CalibrationMethod.PERCENTILE else None


def _ranges_file(method: CalibrationMethod, percentile: float) -> str:
    if method is CalibrationMethod.PERCENTILE:
        return f"ranges-percentile-{percentile:g}.json"
    return f"ranges-{method.value}.json"


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
