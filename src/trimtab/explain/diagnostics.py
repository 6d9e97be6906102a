"""Calibration diagnostics: per tensor, the range every method picks, what each clips, and a
badness score that ranks the tensors worth a look; PNG histograms of the worst ones.

Everything comes from the `HistogramSet` that calibration already collected (one data pass,
cached by `trimtab.calibrate.calibrate`): no data runs through the model here.

Per tensor, with amax_m the threshold of method m (minmax, entropy, percentile, mse), s_m =
amax_m / 127 its int8 step and N the number of values:

    clipped_m  = fraction of values with |x| > amax_m (whole bins, as `Calibration.clipped`)
    dead_m     = share of the non-zero values that round to zero at step s_m, |x| < s_m / 2
                 (bin 0 holds the exact zeros of a ReLU and is left out of both counts)
    spread     = log2(max_m amax_m / min_m amax_m): bits of resolution the methods disagree on
    badness    = spread + dead_minmax + 100 * max_m clipped_m

Each term of `badness` reads "0 is fine, 1 is worth a look": one bit of spread is half the int8
levels, a dead share of 1 means every value rounds to zero when the scale is set by the maximum,
and 100 x clipped is the percentage of values some method cuts off.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trimtab._io import atomic_write_bytes, atomic_write_json
from trimtab.calibrate.cache import clipped_fraction
from trimtab.calibrate.histogram import HistogramSet, TensorHistogram
from trimtab.calibrate.methods import DEFAULT_PERCENTILE, INT8_LEVELS, amax_for
from trimtab.options import CalibrationMethod

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ALL_METHODS = tuple(m.value for m in CalibrationMethod)
SLUG_LENGTH = 40
PLOT_BINS = 256  # histograms are re-binned to this many bars for plotting


@dataclass(frozen=True)
class TensorDiagnostics:
    """What calibration sees in one tensor. `amax`, `clipped` and `dead` map method -> value."""

    name: str
    count: int
    observed_amax: float
    amax: dict[str, float]
    clipped: dict[str, float]
    dead: dict[str, float]
    spread_bits: float
    badness: float

    @classmethod
    def from_dict(cls, data: dict) -> TensorDiagnostics:
        return cls(
            name=str(data["name"]),
            count=int(data["count"]),
            observed_amax=float(data["observed_amax"]),
            amax={str(k): float(v) for k, v in data["amax"].items()},
            clipped={str(k): float(v) for k, v in data["clipped"].items()},
            dead={str(k): float(v) for k, v in data["dead"].items()},
            spread_bits=float(data["spread_bits"]),
            badness=float(data["badness"]),
        )


@dataclass
class CalibrationDiagnostics:
    """Diagnostics of every calibrated tensor (graph order), with the settings that made them."""

    tensors: list[TensorDiagnostics]
    methods: tuple[str, ...] = ALL_METHODS
    percentile: float = DEFAULT_PERCENTILE
    num_samples: int = 0
    model_sha256: str = ""
    data_fingerprint: str = ""
    skipped: list[str] = field(default_factory=list)  # tensors with no data value (only sentinels)

    def worst(self, n: int = 6) -> list[TensorDiagnostics]:
        """The `n` tensors with the highest badness, worst first (ties keep graph order)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        order = sorted(range(len(self.tensors)), key=lambda i: (-self.tensors[i].badness, i))
        return [self.tensors[i] for i in order[:n]]

    def __getitem__(self, name: str) -> TensorDiagnostics:
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": "calibration-diagnostics",
            "methods": list(self.methods),
            "percentile": self.percentile,
            "num_samples": self.num_samples,
            "model_sha256": self.model_sha256,
            "data_fingerprint": self.data_fingerprint,
            "skipped": list(self.skipped),
            "tensors": [asdict(t) for t in self.tensors],
        }

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationDiagnostics:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"calibration diagnostics format {version}; this trimtab reads {FORMAT_VERSION}")
        return cls(
            tensors=[TensorDiagnostics.from_dict(t) for t in data["tensors"]],
            methods=tuple(data["methods"]),
            percentile=float(data["percentile"]),
            num_samples=int(data.get("num_samples", 0)),
            model_sha256=str(data.get("model_sha256", "")),
            data_fingerprint=str(data.get("data_fingerprint", "")),
            skipped=list(data.get("skipped", [])),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> CalibrationDiagnostics:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def calibration_diagnostics(
    hist_set: HistogramSet,
    *,
    methods: Sequence[CalibrationMethod | str] = ALL_METHODS,
    percentile: float = DEFAULT_PERCENTILE,
) -> CalibrationDiagnostics:
    """Diagnose every tensor of `hist_set` under each of `methods` (see the module docstring).

    Tensors that held no data value (only sentinels such as an attention mask) are listed in
    `skipped`: they stay float and have no range to judge.
    """
    methods = tuple(CalibrationMethod(m).value for m in methods)
    if not methods:
        raise ValueError("methods must name at least one calibration method")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    tensors, skipped = [], []
    for hist in hist_set.values():
        if hist.count == 0:
            skipped.append(hist.name)
            continue
        tensors.append(diagnose_tensor(hist, methods, percentile))
    meta = hist_set.meta
    return CalibrationDiagnostics(
        tensors=tensors,
        methods=methods,
        percentile=float(percentile),
        num_samples=int(meta.get("num_samples", 0)),
        model_sha256=str(meta.get("model_sha256", "")),
        data_fingerprint=str(meta.get("data_fingerprint", "")),
        skipped=skipped,
    )


def diagnose_tensor(
    hist: TensorHistogram, methods: Sequence[str] = ALL_METHODS, percentile: float = DEFAULT_PERCENTILE
) -> TensorDiagnostics:
    """One tensor's amax, clipped and dead share per method, spread and badness."""
    amax = {m: float(amax_for(hist, m, percentile)) for m in methods}
    clipped = {m: clipped_fraction(hist, a) for m, a in amax.items()}
    dead = {m: dead_share(hist, a) for m, a in amax.items()}
    positive = [a for a in amax.values() if a > 0.0]
    spread = math.log2(max(positive) / min(positive)) if positive else 0.0
    dead_at_max = dead_share(hist, hist.amax_observed)
    badness = spread + dead_at_max + 100.0 * max(clipped.values())
    return TensorDiagnostics(
        name=hist.name,
        count=int(hist.count),
        observed_amax=float(hist.amax_observed),
        amax=amax,
        clipped=clipped,
        dead=dead,
        spread_bits=float(spread),
        badness=float(badness),
    )


def fraction_above(hist: TensorHistogram, threshold: float) -> float:
    """Fraction of the values with |x| > threshold, taking values as uniform inside each bin:
    with p = threshold / w, k = floor(p):  (sum_{b>k} n_b + n_k (1 - (p - k))) / N.
    0 at or beyond the largest value seen."""
    total = int(hist.counts.sum())
    if total == 0 or hist.range == 0.0 or threshold >= hist.amax_observed:
        return 0.0
    if threshold <= 0.0:
        return 1.0
    position = threshold / hist.bin_width
    k = min(int(position), hist.bins - 1)
    above = float(hist.counts[k + 1 :].sum()) + float(hist.counts[k]) * (1.0 - min(position - k, 1.0))
    return min(max(above / total, 0.0), 1.0)


def dead_share(hist: TensorHistogram, amax: float, levels: int = INT8_LEVELS) -> float:
    """Share of the non-zero values (bins >= 1) with |x| < s / 2, s = amax / levels: they round to
    zero. 0 when s / 2 falls inside bin 0 (the histogram cannot tell them from exact zeros)."""
    total = int(hist.counts.sum())
    nonzero = total - int(hist.counts[0])
    half_step = amax / levels / 2.0
    if nonzero <= 0 or hist.range == 0.0 or half_step <= hist.bin_width:
        return 0.0
    below = total * (1.0 - fraction_above(hist, half_step)) - int(hist.counts[0])
    return min(max(below / nonzero, 0.0), 1.0)


# plots ---------------------------------------------------------------------------------------
def plot_worst_histograms(
    diag: CalibrationDiagnostics, hist_set: HistogramSet, folder: str | Path, n: int = 6
) -> list[Path]:
    """PNG plots (count on a log scale vs |x|, a vertical line at each method's amax) of the `n`
    worst tensors, written atomically to `folder` as `NN-<slug>.png` (worst first; the slug keeps
    only [a-z0-9-] of the tensor name, so no name can reach outside `folder`).

    matplotlib is optional: without it, logs a warning and returns [].
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed; no calibration histogram plots. hint: pip install matplotlib")
        return []
    folder = Path(folder)
    written = []
    for index, tensor in enumerate(diag.worst(n), start=1):
        if tensor.name not in hist_set:
            log.warning("no histogram for tensor %r; its plot is skipped", tensor.name)
            continue
        figure = Figure(figsize=(7.0, 4.0), dpi=100)
        FigureCanvasAgg(figure)
        _draw(figure, tensor, hist_set[tensor.name])
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        written.append(atomic_write_bytes(folder / f"{index:02d}-{slug(tensor.name)}.png", buffer.getvalue()))
    return written


def slug(name: str, length: int = SLUG_LENGTH) -> str:
    """A file-name-safe stand-in for a tensor name: lower case, runs of anything but [a-z0-9]
    become '-', trimmed to `length` characters; 'tensor' when nothing is left."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:length].strip("-")
    return text or "tensor"


def _draw(figure, tensor: TensorDiagnostics, hist: TensorHistogram) -> None:
    axes = figure.add_subplot(1, 1, 1)
    factor = max(1, hist.bins // PLOT_BINS)
    counts = hist.counts.reshape(-1, factor).sum(axis=1).astype(np.float64)
    edges = np.linspace(0.0, hist.range, counts.size + 1)
    # Empty bins sit on the floor 0.5 (below one count), so a lone outlier bin still shows as a bar.
    axes.stairs(np.maximum(counts, 0.5), edges, baseline=0.5, fill=True, color="0.55")
    axes.set_yscale("log")
    axes.set_ylim(bottom=0.5)
    colours = {"minmax": "tab:red", "entropy": "tab:blue", "percentile": "tab:green", "mse": "tab:purple"}
    for method, amax in tensor.amax.items():
        label = f"{method}: amax {amax:.4g}, clips {100 * tensor.clipped[method]:.3g}%"
        axes.axvline(amax, color=colours.get(method, "black"), linestyle="--", linewidth=1.2, label=label)
    axes.set_xlim(0.0, max(max(tensor.amax.values(), default=0.0), tensor.observed_amax, 1e-12) * 1.05)
    axes.set_xlabel("|x|")
    axes.set_ylabel("count (log)")
    # parse_math=False: a '$' in a tensor name must not be read as mathtext.
    axes.set_title(f"{tensor.name}  (badness {tensor.badness:.2f})", parse_math=False, fontsize=9)
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
