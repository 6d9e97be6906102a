"""Streaming histograms of |x|, one per activation tensor.

Calibration never keeps activations: each batch is folded into a fixed-size histogram per tensor
and dropped, so memory is O(tensors x bins) whatever the number of samples (FACTS.md: ONNX
Runtime's quantizer kept every intermediate tensor, 9.4 GB on a small model).

A histogram covers [0, R] with `bins` equal bins of width w = R / bins; value v falls in bin
floor(|v| / w), clamped to the last bin. When a later batch holds |v| > R, R doubles (as TensorRT
does) until it covers the new maximum: with R' = 2^k R, new bin j is the sum of old bins
[j 2^k, (j+1) 2^k), so bin edges stay aligned and no count is lost, only resolution.

Sentinels: |v| >= 1e30 marks a value that is not data but a flag (an exported attention mask adds
-3.4e38). Such values are counted in `sentinel_count` and kept out of the histogram, min and max;
otherwise one of them would stretch R to 1e38 and crush every real value into bin 0.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from trimtab._io import atomic_write_bytes
from trimtab.errors import CalibrationError

log = logging.getLogger(__name__)

DEFAULT_BINS = 2048
SENTINEL_ABS = 1e30
# A tensor whose values are mostly sentinels carries flags, not data: the builder should keep it float.
DOMINATED_FRACTION = 0.5
FORMAT_VERSION = 1


class TensorHistogram:
    """Histogram of |x| for one tensor, plus running signed min/max and counts.

    `counts[i]` counts finite non-sentinel values with i*w <= |v| < (i+1)*w, w = `range / bins`
    (the last bin also holds |v| == range). `min`/`max` are the signed extremes of the same
    values (+inf/-inf while `count == 0`).
    """

    def __init__(self, name: str, bins: int = DEFAULT_BINS) -> None:
        if bins < 1 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two (so ranges can double), got {bins}")
        self.name = name
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.range = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.sentinel_count = 0

    # derived -----------------------------------------------------------------------------
    @property
    def bin_width(self) -> float:
        return self.range / self.bins

    @property
    def edges(self) -> np.ndarray:
        """The bins + 1 bin edges, float64."""
        return np.linspace(0.0, self.range, self.bins + 1)

    @property
    def amax_observed(self) -> float:
        """max |v| over the non-sentinel values seen (0.0 if none)."""
        if self.count == 0:
            return 0.0
        return max(abs(self.min), abs(self.max))

    @property
    def sentinel_fraction(self) -> float:
        total = self.count + self.sentinel_count
        return self.sentinel_count / total if total else 0.0

    @property
    def dominated_by_sentinels(self) -> bool:
        """True when more than half the values are sentinels (keep such a tensor in float)."""
        return self.sentinel_fraction > DOMINATED_FRACTION

    # update ------------------------------------------------------------------------------
    def update(self, x: np.ndarray, sources: Sequence[str] = ()) -> None:
        """Fold one batch of values into the histogram.

        Raises CalibrationError if `x` holds NaN or +-Inf, naming the tensor and `sources`
        (the samples of the batch) so the bad input can be found.
        """
        signed = np.asarray(x, dtype=np.float32).ravel()
        if signed.size == 0:
            return
        flat = np.abs(signed)
        peak = float(flat.max())  # NaN propagates through max, so one pass checks finiteness
        if not math.isfinite(peak):
            raise _non_finite_error(self.name, x, sources)
        if peak >= SENTINEL_ABS:
            keep = flat < SENTINEL_ABS
            self.sentinel_count += int(flat.size - np.count_nonzero(keep))
            flat, signed = flat[keep], signed[keep]
            if flat.size == 0:
                return
            peak = float(flat.max())
        self.add_batch(int(flat.size), float(signed.min()), float(signed.max()), peak,
                       lambda scale: _bin_counts(flat, scale, self.bins))

    def add_batch(self, count: int, low: float, high: float, peak: float,
                  bin_counts: Callable[[np.float32], np.ndarray]) -> None:
        """Fold one batch of `count` finite, non-sentinel values given as a summary (signed
        extremes, max |v|), for collectors that keep the values elsewhere (on a GPU).
        `bin_counts(scale)` gives the batch's counts over int(|v| * scale) clipped to the last bin,
        scale = bins / range in float32, once the range has grown to hold `peak`."""
        self.count += count
        self.min = min(self.min, low)
        self.max = max(self.max, high)
        self._grow_to(peak)
        if self.range == 0.0:
            self.counts[0] += count
            return
        self.counts += bin_counts(np.float32(self.bins / self.range))

    def _grow_to(self, peak: float) -> None:
        """Widen [0, range] by doubling until it holds `peak`, merging 2^k old bins per new bin."""
        if peak <= self.range:
            return
        if self.range == 0.0:
            # Everything seen so far was 0 and sits in bin 0, which stays bin 0 in any range.
            self.range = peak
            return
        new_range, factor = self.range, 1
        while new_range < peak:
            new_range *= 2.0
            factor *= 2
        merged = np.zeros_like(self.counts)
        if factor >= self.bins:
            merged[0] = self.counts.sum()
        else:
            kept = self.bins // factor
            merged[:kept] = self.counts.reshape(kept, factor).sum(axis=1)
        self.counts, self.range = merged, new_range

    def __repr__(self) -> str:
        return (
            f"TensorHistogram({self.name!r}, count={self.count}, range={self.range:.6g}, "
            f"min={self.min:.6g}, max={self.max:.6g}, sentinels={self.sentinel_count})"
        )


def _bin_counts(flat: np.ndarray, scale: np.float32, bins: int) -> np.ndarray:
    index = (flat * scale).astype(np.intp)
    np.minimum(index, bins - 1, out=index)
    return np.bincount(index, minlength=bins)


def _non_finite_error(name: str, x: np.ndarray, sources: Sequence[str]) -> CalibrationError:
    values = np.asarray(x)
    n_nan = int(np.count_nonzero(np.isnan(values)))
    n_inf = int(np.count_nonzero(np.isinf(values)))
    shown = ", ".join(list(sources)[:8]) + (" ..." if len(sources) > 8 else "")
    return CalibrationError(
        f"tensor '{name}' holds {n_nan} NaN and {n_inf} Inf values in the batch of samples "
        f"[{shown or 'unknown'}]; ranges cannot be calibrated from non-finite values",
        hint="check these samples and the preprocessing (a division by zero, an empty image, "
        "a corrupt file) or drop them from the calibration data; if the model itself overflows "
        "(e.g. a -inf attention mask), export it with a large finite negative such as -1e38 instead",
    )


class ChannelRange:
    """Running signed min and max of one tensor per channel of its last axis (the input
    features of a MatMul/Gemm that reads it): two float64 vectors of C values, whatever the
    number of samples. SmoothQuant-style smoothing needs max |x_c| = max(-min_c, max_c).
    Sentinel values (|v| >= 1e30) are left out, as in the histograms."""

    def __init__(self, name: str, channels: int) -> None:
        if channels < 1:
            raise ValueError(f"a channel range needs at least one channel, got {channels}")
        self.name = name
        self.min = np.full(channels, np.inf)
        self.max = np.full(channels, -np.inf)

    @property
    def channels(self) -> int:
        return self.min.size

    @property
    def amax(self) -> np.ndarray:
        """max |x_c| per channel (0 for a channel that held no value)."""
        seen = np.isfinite(self.min)
        return np.where(seen, np.maximum(-self.min, self.max), 0.0)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 0 or x.shape[-1] != self.channels:
            raise ValueError(f"tensor '{self.name}': expected last axis {self.channels}, got shape {x.shape}")
        rows = x.reshape(-1, self.channels)
        if rows.size == 0:
            return
        flagged = np.abs(rows) >= SENTINEL_ABS
        if flagged.any():
            low = np.where(flagged, np.inf, rows).min(axis=0)
            high = np.where(flagged, -np.inf, rows).max(axis=0)
        else:
            low, high = rows.min(axis=0), rows.max(axis=0)
        self.add(low, high)

    def add(self, low: np.ndarray, high: np.ndarray) -> None:
        """Fold one batch's per-channel minima and maxima (sentinels already left out)."""
        np.minimum(self.min, np.asarray(low, np.float64), out=self.min)
        np.maximum(self.max, np.asarray(high, np.float64), out=self.max)


class HistogramSet:
    """The histograms of all calibrated tensors, in the order they were first seen, plus metadata.

    `meta` is a JSON-serialisable dict (model sha256, data fingerprint, sample count, ...).
    Saved as .npz of plain arrays (no pickle) by `save` and read back by `load`.
    """

    def __init__(self, bins: int = DEFAULT_BINS, meta: dict | None = None) -> None:
        self.bins = bins
        self.meta: dict = dict(meta or {})
        self._hists: dict[str, TensorHistogram] = {}
        # Optional per-channel statistic of MatMul/Gemm inputs (see ChannelRange).
        self.channels: dict[str, ChannelRange] = {}

    def update_channels(self, name: str, x: np.ndarray) -> None:
        self.channel_range(name, int(np.shape(x)[-1])).update(x)

    def update(self, name: str, x: np.ndarray, sources: Sequence[str] = ()) -> None:
        self.histogram(name).update(x, sources)

    def histogram(self, name: str) -> TensorHistogram:
        """The histogram of `name`, made empty on first use."""
        hist = self._hists.get(name)
        if hist is None:
            hist = self._hists[name] = TensorHistogram(name, self.bins)
        return hist

    def channel_range(self, name: str, channels: int) -> ChannelRange:
        """The channel range of `name` (`channels` values), made on first use."""
        channel_range = self.channels.get(name)
        if channel_range is None:
            channel_range = self.channels[name] = ChannelRange(name, channels)
        elif channel_range.channels != channels:
            raise ValueError(f"tensor '{name}': expected last axis {channel_range.channels}, got {channels}")
        return channel_range

    def add(self, hist: TensorHistogram) -> None:
        if hist.bins != self.bins:
            raise ValueError(f"histogram '{hist.name}' has {hist.bins} bins, the set has {self.bins}")
        self._hists[hist.name] = hist

    def __getitem__(self, name: str) -> TensorHistogram:
        return self._hists[name]

    def __contains__(self, name: object) -> bool:
        return name in self._hists

    def __iter__(self) -> Iterator[str]:
        return iter(self._hists)

    def __len__(self) -> int:
        return len(self._hists)

    @property
    def names(self) -> list[str]:
        return list(self._hists)

    def values(self) -> Iterable[TensorHistogram]:
        return self._hists.values()

    def sentinel_tensors(self) -> list[str]:
        """Tensors in which any sentinel (|v| >= 1e30) was seen."""
        return [h.name for h in self._hists.values() if h.sentinel_count]

    def dominated_tensors(self) -> list[str]:
        """Tensors made mostly of sentinels: flags, not data; keep them in float."""
        return [h.name for h in self._hists.values() if h.dominated_by_sentinels]

    # serialisation -----------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        hists = list(self._hists.values())
        return {
            "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
            "meta_json": np.array(json.dumps(self.meta, sort_keys=True)),
            "names": np.array([h.name for h in hists], dtype=np.str_),
            "counts": np.stack([h.counts for h in hists]) if hists else np.zeros((0, self.bins), np.int64),
            "ranges": np.array([h.range for h in hists], dtype=np.float64),
            "mins": np.array([h.min for h in hists], dtype=np.float64),
            "maxs": np.array([h.max for h in hists], dtype=np.float64),
            "totals": np.array([h.count for h in hists], dtype=np.int64),
            "sentinels": np.array([h.sentinel_count for h in hists], dtype=np.int64),
            **self._channel_arrays(),
        }

    def _channel_arrays(self) -> dict[str, np.ndarray]:
        """Channel ranges as flat arrays (names, sizes, concatenated mins and maxs); none if empty."""
        ranges = list(self.channels.values())
        if not ranges:
            return {}
        return {
            "channel_names": np.array([r.name for r in ranges], dtype=np.str_),
            "channel_sizes": np.array([r.channels for r in ranges], dtype=np.int64),
            "channel_mins": np.concatenate([r.min for r in ranges]),
            "channel_maxs": np.concatenate([r.max for r in ranges]),
        }

    def save(self, path: str | Path) -> Path:
        """Write an .npz atomically (compressed: most bins of most tensors are zero)."""
        import io

        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.to_arrays())
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> HistogramSet:
        """Read a set written by `save`. Raises CalibrationError if the file is unreadable."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls.from_arrays({key: data[key] for key in data.files})
        except CalibrationError:
            raise
        except Exception as exc:  # zipfile/ValueError/KeyError: all mean "not a file we wrote"
            raise CalibrationError(
                f"cannot read the histogram file {path}: {exc}",
                hint=f"delete {path}; the next calibration rebuilds it",
            ) from exc

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> HistogramSet:
        version = int(arrays["format_version"])
        if version != FORMAT_VERSION:
            raise CalibrationError(
                f"histogram format version {version}; this trimtab reads version {FORMAT_VERSION}",
                hint="delete the calibration cache; the next calibration rebuilds it",
            )
        _check_arrays(arrays)
        counts = arrays["counts"]
        result = cls(bins=int(counts.shape[1]), meta=json.loads(str(arrays["meta_json"])))
        for i, name in enumerate(arrays["names"].tolist()):
            hist = TensorHistogram(name, result.bins)
            hist.counts = counts[i].astype(np.int64, copy=True)
            hist.range = float(arrays["ranges"][i])
            hist.min, hist.max = float(arrays["mins"][i]), float(arrays["maxs"][i])
            hist.count = int(arrays["totals"][i])
            hist.sentinel_count = int(arrays["sentinels"][i])
            result.add(hist)
        if "channel_names" in arrays:
            offsets = np.concatenate([[0], np.cumsum(arrays["channel_sizes"])])
            for i, name in enumerate(arrays["channel_names"].tolist()):
                channel_range = ChannelRange(name, int(arrays["channel_sizes"][i]))
                channel_range.min = arrays["channel_mins"][offsets[i]:offsets[i + 1]].astype(np.float64)
                channel_range.max = arrays["channel_maxs"][offsets[i]:offsets[i + 1]].astype(np.float64)
                result.channels[name] = channel_range
        return result


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Refuse a histogram file whose arrays unzip but cannot be histograms (found by fuzzing the
    cache reader: a file with the right keys and hostile values crashed the range methods)."""
    counts = arrays["counts"]
    rows = counts.shape[0] if counts.ndim == 2 else -1
    per_tensor = ("names", "ranges", "mins", "maxs", "totals", "sentinels")
    problems = []
    if counts.ndim != 2 or counts.shape[1] < 1 or counts.dtype.kind not in "iu" or (counts < 0).any():
        problems.append("counts is not a 2-D array of non-negative integers")
    elif any(arrays[key].shape != (rows,) for key in per_tensor):
        problems.append("per-tensor arrays differ in length")
    else:
        mins, maxs, ranges = (arrays[k].astype(np.float64) for k in ("mins", "maxs", "ranges"))
        seen = counts.sum(axis=1) > 0
        if not np.isfinite(ranges).all() or (ranges < 0).any():
            problems.append("a histogram range is negative or not finite")
        if not (np.isfinite(mins[seen]).all() and np.isfinite(maxs[seen]).all() and (mins[seen] <= maxs[seen]).all()):
            problems.append("a tensor's min/max is not finite or min > max")
        if (arrays["totals"] < 0).any() or (arrays["sentinels"] < 0).any():
            problems.append("a negative count")
    if "channel_names" in arrays:
        sizes = arrays["channel_sizes"]
        lengths = {arrays["channel_mins"].shape, arrays["channel_maxs"].shape}
        if (sizes.ndim != 1 or (sizes < 1).any() or sizes.shape != arrays["channel_names"].shape
                or lengths != {(int(sizes.sum()),)} or not np.isfinite(arrays["channel_mins"]).all()
                or not np.isfinite(arrays["channel_maxs"]).all()):
            problems.append("per-channel ranges are inconsistent")
    if problems:  # HistogramSet.load turns this into a CalibrationError naming the file
        raise ValueError(f"inconsistent histogram arrays: {problems[0]}")
