"""Risk lint: numeric hazards of a model, found before any calibration or build is paid for.

    lint(model, histograms, ranges=None) -> [Finding(rule, severity, node, tensor, evidence, message, action)]

It reads the model's weights and, when given, the histograms of |x| that calibration's single
data pass produces (`trimtab.calibrate.collect_histograms`); it never runs the model. Each rule
states its evidence as numbers and says what to do. Rules and default thresholds (`LintThresholds`):

  outlier-range       max|x| / p99.99(|x|) > 10: a few values set the minmax scale.
  outlier-channels    max_c amax_c / median_c amax_c > 10 on a MatMul/Gemm input (HistogramSet.channels).
  dead-quantization   at the scale s = amax / 127 (minmax unless `ranges` give amax), more than
                      half of the non-zero values satisfy |x| < s / 2 and so quantize to 0.
  softmax-logits      Softmax input amax > 30 or rms > 10: near one-hot probabilities, and an int8
                      step of amax / 127 in the logits changes a probability by a factor exp(step).
  saturation          > 25 % of a Sigmoid's input has |x| > 6 (Tanh: > 3).
  scale-mismatch      residual Add/Sum with input amax ratio > 20; LayerNormalization (also the
                      ReduceMean/Sub decomposition) whose input has amax / rms > 20.
  fp16-overflow       activations with |x| > 65504 (error) or above a quarter of it (warning: a few
                      such values summed overflow); weights beyond 65504 (warning: the fp16 build
                      keeps their node in fp32).
  fp16-underflow      weight values below 2^-24 (0 in fp16) carry > 0.1 % of its sum |w| (warning),
                      or values below the smallest normal 6.1e-5 do (info: subnormal, fewer digits).

Exact zeros and tiny values share histogram bin 0, so "non-zero" in dead-quantization is estimated:
for tensors that can hold exact zeros (graph inputs, Relu/Clip outputs and what only moves, scales
or pools them) bin 0 is taken to hold as many non-zero values as bin 1 (the zeros' spike is
removed, as entropy calibration does); elsewhere all of bin 0 counts as non-zero. So a Relu output
that is mostly 0..tiny cannot be told from one that is mostly exact zeros, and is not flagged.
Softmax outputs are reported as info only: probabilities span [0, 1] by construction.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trimtab._io import atomic_write_json

if TYPE_CHECKING:
    import onnx

    from trimtab.calibrate.histogram import HistogramSet, TensorHistogram

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
INT8_LEVELS = 127
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14  # 6.1e-5: below it fp16 is subnormal, and hardware with FTZ flushes it
FP16_TINY = 2.0**-24  # smallest subnormal: smaller magnitudes flush to 0 (as trimtab.build.fp16 counts them)
SENTINEL_ABS = 1e30
# Ops whose output is exactly 0 for many inputs, and ops that keep the zeros of their inputs.
ZERO_MAKING_OPS = frozenset({"Relu", "Clip"})
ZERO_KEEPING_OPS = frozenset({
    "MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
    "Concat", "Pad", "Slice", "Gather", "Resize", "Upsample", "Mul", "Div", "Split", "Expand", "Tile",
    "AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceMax", "ReduceSum",
})
SATURATION = {"Sigmoid": 6.0, "Tanh": 3.0}


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return ("info", "warning", "error").index(self.value)


class Rule(StrEnum):
    OUTLIER_RANGE = "outlier-range"
    OUTLIER_CHANNELS = "outlier-channels"
    DEAD_QUANTIZATION = "dead-quantization"
    SOFTMAX_LOGITS = "softmax-logits"
    SATURATION = "saturation"
    SCALE_MISMATCH = "scale-mismatch"
    FP16_OVERFLOW = "fp16-overflow"
    FP16_UNDERFLOW = "fp16-underflow"


@dataclass(frozen=True)
class LintThresholds:
    """When each rule fires (see the module docstring). Fractions are in [0, 1]."""

    outlier_ratio: float = 10.0
    outlier_percentile: float = 99.99
    channel_ratio: float = 10.0
    dead_fraction: float = 0.5
    softmax_amax: float = 30.0
    softmax_rms: float = 10.0
    saturated_fraction: float = 0.25
    residual_ratio: float = 20.0
    layernorm_ratio: float = 20.0
    fp16_headroom: float = 0.25
    flush_mass: float = 1e-3  # share of a weight's sum |w| carried by values that lose precision
    min_values: int = 256  # histograms with fewer values are too thin for the statistical rules
    min_weight_values: int = 16  # smaller weights (an eps, a scalar) get info, not warnings

    def __post_init__(self) -> None:
        for name in ("outlier_ratio", "channel_ratio", "residual_ratio", "layernorm_ratio"):
            if not getattr(self, name) > 1.0:
                raise ValueError(f"{name} must be a ratio > 1, got {getattr(self, name)}")
        for name in ("dead_fraction", "saturated_fraction", "fp16_headroom", "flush_mass"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a fraction in (0, 1], got {getattr(self, name)}")
        if not 0.0 < self.outlier_percentile < 100.0:
            raise ValueError(f"outlier_percentile must be in (0, 100), got {self.outlier_percentile}")
        if not (self.softmax_amax > 0 and self.softmax_rms > 0):
            raise ValueError("softmax_amax and softmax_rms must be positive")
        if self.min_values < 1 or self.min_weight_values < 1:
            raise ValueError("min_values and min_weight_values must be >= 1")


@dataclass(frozen=True)
class Finding:
    """One risk: which rule, how bad, where (`node` the ONNX node the action applies to, `tensor`
    the tensor measured; either may be None), the numbers that triggered it, and what to do."""

    rule: Rule
    severity: Severity
    node: str | None
    tensor: str | None
    evidence: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    action: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", Rule(self.rule))
        object.__setattr__(self, "severity", Severity(self.severity))
        object.__setattr__(self, "evidence", {k: _json_safe(v) for k, v in self.evidence.items()})

    def at_least(self, severity: Severity | str) -> bool:
        return self.severity.rank >= Severity(severity).rank

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rule"], data["severity"] = str(self.rule), str(self.severity)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def save_findings(findings: list[Finding], path: str | Path) -> Path:
    """Write `{"schema_version": 1, "findings": [...]}` atomically."""
    return atomic_write_json(path, {"schema_version": SCHEMA_VERSION, "findings": [f.to_dict() for f in findings]})


def load_findings(path: str | Path) -> list[Finding]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: lint schema version {data.get('schema_version')}, expected {SCHEMA_VERSION}")
    return [Finding.from_dict(item) for item in data["findings"]]


def lint(
    model: Any,
    histograms: HistogramSet | None = None,
    *,
    ranges: Mapping[str, Any] | Any = None,
    thresholds: LintThresholds | None = None,
) -> list[Finding]:
    """Every finding for `model` (a trimtab Model or an onnx.ModelProto), worst first, then in
    graph order. Without `histograms` only the weight rules run. `ranges` (tensor -> TensorRange
    or amax, or a Calibration) gives the scale dead-quantization checks; default minmax."""
    graph = _Graph(getattr(model, "proto", model), histograms, ranges, thresholds or LintThresholds())
    findings = list(_weight_findings(graph))
    if histograms is not None:
        for rule in (_tensor_findings, _channel_findings, _softmax_findings, _saturation_findings,
                     _residual_findings, _layernorm_findings):
            findings.extend(rule(graph))
    order = {name: i for i, name in enumerate(graph.names)}
    findings.sort(key=lambda f: (-f.severity.rank, order.get(f.node or "", len(order))))
    log.info("lint: %d findings (%d warnings or worse)", len(findings),
             sum(f.at_least(Severity.WARNING) for f in findings))
    return findings


class _Graph:
    """What the rules look up: producers, consumers, weights, histograms, chosen amax per tensor."""

    def __init__(self, proto: onnx.ModelProto, histograms, ranges, thresholds: LintThresholds) -> None:
        graph = proto.graph
        self.proto = proto
        self.histograms = histograms
        self.limits = thresholds
        ranges = getattr(ranges, "ranges", ranges) or {}
        self.amax = {name: float(getattr(r, "amax", r)) for name, r in ranges.items()}
        self.initialisers = {init.name for init in graph.initializer}
        self.nodes = list(graph.node)
        self.names = [node.name or f"{node.op_type}_{i}" for i, node in enumerate(self.nodes)]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for output in node.output:
                self.producer[output] = i
            for name in node.input:
                self.consumers.setdefault(name, []).append(i)
        self.may_hold_zeros = self._zero_tensors()
        self.layernorm_starts = _layernorm_starts(self)

    def _zero_tensors(self) -> set[str]:
        # Inputs hold exact zeros often (black pixels, padding).
        zeros = {value.name for value in self.proto.graph.input if value.name not in self.initialisers}
        for node in self.nodes:  # ONNX graphs are topologically sorted
            if node.op_type in ZERO_MAKING_OPS or (
                node.op_type in ZERO_KEEPING_OPS and any(name in zeros for name in node.input)
            ):
                zeros.update(node.output)
        return zeros

    def producer_name(self, tensor: str) -> str | None:
        index = self.producer.get(tensor)
        return None if index is None else self.names[index]

    def hist(self, tensor: str) -> TensorHistogram | None:
        """The tensor's histogram when it is usable data: enough values, not mostly sentinels."""
        if tensor not in self.histograms:
            return None
        hist = self.histograms[tensor]
        if hist.count < self.limits.min_values or hist.dominated_by_sentinels:
            return None
        return hist

    def is_activation(self, tensor: str) -> bool:
        return bool(tensor) and tensor not in self.initialisers and tensor in self.histograms


# histogram arithmetic ------------------------------------------------------------------------
def _count_below(hist: TensorHistogram, t: float) -> float:
    """Number of values with |x| < t, each bin taken as uniform inside (linear in the bin holding t)."""
    if hist.range == 0.0:
        return float(hist.counts.sum()) if t > 0 else 0.0
    position = t / hist.bin_width
    k = int(min(position, hist.bins))
    partial = float(hist.counts[k]) * (position - k) if k < hist.bins else 0.0
    return float(hist.counts[:k].sum()) + partial


def _fraction_above(hist: TensorHistogram, t: float) -> float:
    total = float(hist.counts.sum())
    return 0.0 if total == 0 else max(0.0, 1.0 - _count_below(hist, t) / total)


def _rms(hist: TensorHistogram) -> float:
    """sqrt(sum_b n_b c_b^2 / N) with c_b = (b + 1/2) w, the bin centres."""
    total = float(hist.counts.sum())
    if total == 0 or hist.range == 0.0:
        return 0.0
    centres = (np.arange(hist.bins) + 0.5) * hist.bin_width
    return float(np.sqrt(np.dot(hist.counts, centres**2) / total))


def _dead_fraction(hist: TensorHistogram, amax: float, zeros_possible: bool) -> tuple[float, float]:
    """(share of non-zero values with |x| < s/2 at s = amax / 127, number of non-zero values).

    Bin 0 holds exact zeros and tiny values alike: where exact zeros are possible its non-zero
    part is estimated as min(n_0, n_1), else all of it counts as non-zero."""
    counts = hist.counts
    zeros = float(counts[0] - min(counts[0], counts[1])) if zeros_possible and hist.bins > 1 else 0.0
    nonzero = float(counts.sum()) - zeros
    if nonzero <= 0 or amax <= 0.0:
        return 0.0, nonzero
    below = _count_below(hist, amax / INT8_LEVELS / 2.0) - zeros
    return min(1.0, max(0.0, below / nonzero)), nonzero


# activation rules ----------------------------------------------------------------------------
def _tensor_findings(graph: _Graph) -> Iterator[Finding]:
    """Per tensor: outlier-range, dead-quantization, fp16-overflow of activations."""
    for name in graph.histograms.names:
        hist = graph.hist(name)
        if hist is None:
            continue
        node = graph.producer_name(name)
        yield from _outlier_range(graph, name, node, hist)
        yield from _dead_quantization(graph, name, node, hist)
        yield from _fp16_activation(graph, name, node, hist)


def _outlier_range(graph: _Graph, name: str, node: str | None, hist: TensorHistogram) -> Iterator[Finding]:
    from trimtab.calibrate.methods import percentile_amax

    limits = graph.limits
    amax = hist.amax_observed
    typical = percentile_amax(hist, limits.outlier_percentile)
    if typical <= 0.0 or amax / typical <= limits.outlier_ratio:
        return
    evidence = {"amax": amax, "percentile": limits.outlier_percentile, "percentile_amax": typical,
                "ratio": amax / typical, "values": hist.count,
                "values_above_percentile_x_ratio": hist.count * _fraction_above(hist, typical * limits.outlier_ratio),
                "int8_levels_left_for_typical_values": INT8_LEVELS * typical / amax}
    severity = Severity.WARNING
    chosen = graph.amax.get(name)
    if chosen is not None:
        evidence["chosen_amax"] = chosen
        if chosen / typical <= limits.outlier_ratio:
            severity = Severity.INFO  # the chosen method already clips the outliers
    yield Finding(
        Rule.OUTLIER_RANGE, severity, node, name, evidence,
        f"tensor '{name}': max |x| {amax:.4g} is {amax / typical:.1f}x its {limits.outlier_percentile}th "
        f"percentile {typical:.4g}; minmax would leave typical values about "
        f"{INT8_LEVELS * typical / amax:.1f} of 127 int8 levels",
        "calibrate with percentile (99.99), entropy or mse instead of minmax; if the outliers are "
        "channels feeding a MatMul, enable smoothing; otherwise keep this node in fp16/fp32",
    )


def _dead_quantization(graph: _Graph, name: str, node: str | None, hist: TensorHistogram) -> Iterator[Finding]:
    chosen = graph.amax.get(name)
    amax = hist.amax_observed if chosen is None else chosen
    zeros_possible = name in graph.may_hold_zeros
    dead, nonzero = _dead_fraction(hist, amax, zeros_possible)
    if nonzero < graph.limits.min_values or dead <= graph.limits.dead_fraction:
        return
    scale = amax / INT8_LEVELS
    # Probabilities span [0, 1] by construction, not because of a rare maximum; the large ones carry the result.
    probabilities = name in graph.producer and graph.nodes[graph.producer[name]].op_type == "Softmax"
    evidence = {"amax": amax, "scale_from": "minmax" if chosen is None else "given ranges", "scale": scale,
                "dead_fraction": dead, "nonzero_values": nonzero, "values": hist.count,
                "bin0_fraction": float(hist.counts[0]) / max(1, hist.count),
                "exact_zeros_possible": zeros_possible, "softmax_output": probabilities}
    yield Finding(
        Rule.DEAD_QUANTIZATION, Severity.INFO if probabilities else Severity.WARNING, node, name, evidence,
        f"tensor '{name}': at the int8 scale {scale:.4g} (amax {amax:.4g}), {100 * dead:.1f}% of its "
        f"non-zero values have |x| < scale/2 and quantize to 0"
        + (" (Softmax probabilities: usual, the large ones carry the result)" if probabilities else ""),
        "use a clipping calibration (percentile, entropy or mse) so the scale follows the bulk of the "
        "values, or keep this tensor in fp16/fp32",
    )


def _fp16_activation(graph: _Graph, name: str, node: str | None, hist: TensorHistogram) -> Iterator[Finding]:
    amax = hist.amax_observed
    if amax <= graph.limits.fp16_headroom * FP16_MAX:
        return
    over = hist.count * _fraction_above(hist, FP16_MAX)
    severity = Severity.ERROR if amax > FP16_MAX else Severity.WARNING
    evidence = {"amax": amax, "fp16_max": FP16_MAX, "values_beyond_fp16": over, "values": hist.count}
    what = "overflows fp16 (becomes inf)" if amax > FP16_MAX else "is within 4x of fp16's maximum"
    yield Finding(
        Rule.FP16_OVERFLOW, severity, node, name, evidence,
        f"tensor '{name}': max |x| {amax:.6g} {what} ({FP16_MAX:g})",
        "keep this node and its consumers in fp32 (a PrecisionPlan rule), or rescale the model "
        "(e.g. fold a division earlier) so activations stay well inside fp16",
    )


def _channel_findings(graph: _Graph) -> Iterator[Finding]:
    for name, channel_range in graph.histograms.channels.items():
        amax = channel_range.amax
        median = float(np.median(amax)) if amax.size else 0.0
        if median <= 0.0 or float(amax.max()) / median <= graph.limits.channel_ratio:
            continue
        outliers = np.flatnonzero(amax > graph.limits.channel_ratio * median)
        top = outliers[np.argsort(-amax[outliers])][:10]
        consumer = next((graph.names[i] for i in graph.consumers.get(name, [])
                         if graph.nodes[i].op_type in ("MatMul", "Gemm")), graph.producer_name(name))
        evidence = {"channels": int(amax.size), "max_channel_amax": float(amax.max()),
                    "median_channel_amax": median, "ratio": float(amax.max()) / median,
                    "outlier_channels": int(outliers.size), "top_channels": [int(c) for c in top]}
        yield Finding(
            Rule.OUTLIER_CHANNELS, Severity.WARNING, consumer, name, evidence,
            f"tensor '{name}': {outliers.size} of {amax.size} channels exceed {graph.limits.channel_ratio:g}x "
            f"the median channel amax {median:.4g} (largest {float(amax.max()):.4g}); one per-tensor "
            "int8 scale cannot serve both",
            "enable smoothing (trimtab.build.Smoothing(calibration.channels), SmoothQuant-style) to move "
            "the outlier channels into the weights, or keep the consuming MatMul in fp16/fp32",
        )


def _softmax_findings(graph: _Graph) -> Iterator[Finding]:
    limits = graph.limits
    for node, label in zip(graph.nodes, graph.names):
        if node.op_type != "Softmax" or not node.input:
            continue
        hist = graph.hist(node.input[0])
        if hist is None:
            continue
        amax, rms = hist.amax_observed, _rms(hist)
        if amax <= limits.softmax_amax and rms <= limits.softmax_rms:
            continue
        step = amax / INT8_LEVELS
        evidence = {"amax": amax, "rms": rms, "min": hist.min, "max": hist.max, "int8_step": step,
                    "probability_factor_per_step": math.exp(min(step, 700.0)),
                    "amax_limit": limits.softmax_amax, "rms_limit": limits.softmax_rms}
        yield Finding(
            Rule.SOFTMAX_LOGITS, Severity.WARNING, label, node.input[0], evidence,
            f"Softmax '{label}' is fed logits up to |x| {amax:.4g} (rms {rms:.4g}): after max-subtraction "
            f"most probabilities are 0 or 1, and one int8 step ({step:.3g}) changes a probability "
            f"{math.exp(min(step, 700.0)):.3g}x",
            "keep the Softmax input (and the MatMul/Div producing it) in fp16/fp32; if the model divides "
            "by a temperature or sqrt(d), check that the scaling was exported",
        )


def _saturation_findings(graph: _Graph) -> Iterator[Finding]:
    for node, label in zip(graph.nodes, graph.names):
        limit = SATURATION.get(node.op_type)
        if limit is None or not node.input:
            continue
        hist = graph.hist(node.input[0])
        if hist is None:
            continue
        share = _fraction_above(hist, limit)
        if share <= graph.limits.saturated_fraction:
            continue
        amax = hist.amax_observed
        swish = _is_swish(graph, node)
        evidence = {"saturated_fraction": share, "saturation_at": limit, "amax": amax,
                    "int8_levels_in_active_region": INT8_LEVELS * min(1.0, limit / amax) if amax else 0.0,
                    "swish": swish}
        yield Finding(
            Rule.SATURATION, Severity.INFO if swish else Severity.WARNING, label, node.input[0], evidence,
            f"{node.op_type} '{label}': {100 * share:.1f}% of its input has |x| > {limit:g}, where the "
            f"output is flat; the int8 range up to {amax:.4g} leaves the active region "
            f"{evidence['int8_levels_in_active_region']:.1f} of 127 levels"
            + (" (x * sigmoid(x): the product still carries x)" if swish else ""),
            f"clip this input's range to about +-{2 * limit:g} (values beyond give the same output), or "
            "keep the node in fp16/fp32; a large saturated share often means a missing normalisation upstream",
        )


def _is_swish(graph: _Graph, node) -> bool:
    """Sigmoid(x) multiplied by x itself (SiLU/Swish): saturation there costs nothing."""
    for i in graph.consumers.get(node.output[0], []):
        other = graph.nodes[i]
        if other.op_type == "Mul" and node.input[0] in other.input:
            return True
    return False


def _residual_findings(graph: _Graph) -> Iterator[Finding]:
    for node, label in zip(graph.nodes, graph.names):
        if node.op_type not in ("Add", "Sum"):
            continue
        inputs = [name for name in node.input if graph.is_activation(name)]
        hists = [(name, graph.hist(name)) for name in inputs]
        amaxes = [(name, h.amax_observed) for name, h in hists if h is not None and h.amax_observed > 0]
        if len(amaxes) < 2:
            continue
        (small, low), (large, high) = min(amaxes, key=lambda p: p[1]), max(amaxes, key=lambda p: p[1])
        if high / low <= graph.limits.residual_ratio:
            continue
        feeds = [graph.names[i] for i in graph.consumers.get(node.output[0], [])
                 if graph.nodes[i].op_type == "LayerNormalization" or i in graph.layernorm_starts]
        evidence = {"inputs": [n for n, _ in amaxes], "amax": [a for _, a in amaxes], "ratio": high / low,
                    "int8_levels_left_for_smaller": INT8_LEVELS * low / high, "feeds_layernorm": feeds}
        yield Finding(
            Rule.SCALE_MISMATCH, Severity.WARNING, label, node.output[0], evidence,
            f"{node.op_type} '{label}' adds '{small}' (amax {low:.4g}) to '{large}' (amax {high:.4g}), "
            f"{high / low:.1f}x apart: at the sum's int8 scale the smaller input gets about "
            f"{INT8_LEVELS * low / high:.1f} levels" + (f"; it feeds LayerNorm {feeds}" if feeds else ""),
            "keep this Add (and the residual stream it belongs to) in fp16/fp32, or quantize its inputs "
            "separately rather than the sum",
        )


def _layernorm_starts(graph: _Graph) -> set[int]:
    """Indices of ReduceMean nodes that open a decomposed LayerNorm: mean = ReduceMean(x),
    followed by Sub(x, mean)."""
    starts = set()
    for i, node in enumerate(graph.nodes):
        if node.op_type != "ReduceMean" or not node.input:
            continue
        for j in graph.consumers.get(node.output[0], []):
            other = graph.nodes[j]
            if other.op_type == "Sub" and list(other.input[:2]) == [node.input[0], node.output[0]]:
                starts.add(i)
    return starts


def _layernorm_findings(graph: _Graph) -> Iterator[Finding]:
    starts = graph.layernorm_starts
    for i, (node, label) in enumerate(zip(graph.nodes, graph.names)):
        if node.op_type != "LayerNormalization" and i not in starts:
            continue
        hist = graph.hist(node.input[0])
        rms = _rms(hist) if hist is not None else 0.0
        if hist is None or rms <= 0.0 or hist.amax_observed / rms <= graph.limits.layernorm_ratio:
            continue
        amax = hist.amax_observed
        evidence = {"amax": amax, "rms": rms, "ratio": amax / rms, "decomposed": i in starts,
                    "int8_step_over_rms": amax / INT8_LEVELS / rms}
        yield Finding(
            Rule.SCALE_MISMATCH, Severity.WARNING, label, node.input[0], evidence,
            f"LayerNorm '{label}': its input's max |x| {amax:.4g} is {amax / rms:.1f}x its rms {rms:.4g} "
            "(a few channels or values at a very different scale); an int8 step of "
            f"{amax / INT8_LEVELS:.3g} is {amax / INT8_LEVELS / rms:.2f} of a typical value",
            "keep the LayerNorm input (the residual stream) in fp16/fp32; smoothing the following "
            "MatMuls handles outlier channels after the LayerNorm",
        )


# weight rules --------------------------------------------------------------------------------
def _weights(graph: _Graph) -> Iterator[tuple[str, str | None, np.ndarray]]:
    """(name, consuming node, float array) for initialisers and Constant nodes."""
    from onnx import TensorProto, numpy_helper

    floats = (TensorProto.FLOAT, TensorProto.DOUBLE)
    for init in graph.proto.graph.initializer:
        if init.data_type in floats:
            users = graph.consumers.get(init.name, [])
            yield init.name, graph.names[users[0]] if users else None, numpy_helper.to_array(init)
    for node, label in zip(graph.nodes, graph.names):
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type in floats:
                    yield node.output[0], label, numpy_helper.to_array(attribute.t)


def _weight_findings(graph: _Graph) -> Iterator[Finding]:
    for name, node, values in _weights(graph):
        magnitudes = np.abs(values.astype(np.float64)).ravel()
        magnitudes = magnitudes[np.isfinite(magnitudes)]
        if magnitudes.size:
            yield from _weight_overflow(name, node, magnitudes)
            yield from _weight_underflow(graph, name, node, magnitudes)


def _weight_overflow(name: str, node: str | None, magnitudes: np.ndarray) -> Iterator[Finding]:
    over = magnitudes > FP16_MAX
    if not over.any():
        return
    sentinels = bool(np.all(magnitudes[over] >= SENTINEL_ABS))
    evidence = {"amax": float(magnitudes.max()), "fp16_max": FP16_MAX, "values_beyond_fp16": int(over.sum()),
                "values": int(magnitudes.size), "sentinel": sentinels}
    yield Finding(
        Rule.FP16_OVERFLOW, Severity.WARNING, node, name, evidence,
        f"weight '{name}': {int(over.sum())} of {magnitudes.size} values exceed fp16's maximum {FP16_MAX:g} "
        f"(largest {float(magnitudes.max()):.4g}) and become inf in fp16"
        + ("; they look like mask sentinels (-inf is fine unless a whole row is masked)" if sentinels else ""),
        "trimtab's fp16 build keeps the consuming node in fp32 (slower); to run it in fp16, "
        + ("replace the mask sentinel by -1e4" if sentinels else "rescale the weight and compensate downstream"),
    )


def _weight_underflow(graph: _Graph, name: str, node: str | None, magnitudes: np.ndarray) -> Iterator[Finding]:
    """Values below fp16's smallest normal lose precision (and are 0 on flush-to-zero hardware);
    values below 2^-24 are 0 in any fp16. Judged by the share of sum |w| they carry (a few dead
    channels of ~1e-10 do not matter); constants of fewer than `min_weight_values` (an epsilon)
    always count."""
    total = float(magnitudes.sum())
    if total <= 0.0:
        return
    limits = graph.limits
    subnormal_mass = float(magnitudes[magnitudes < FP16_MIN_NORMAL].sum()) / total
    zero_mass = float(magnitudes[(magnitudes > 0) & (magnitudes < FP16_TINY)].sum()) / total
    small = magnitudes.size < limits.min_weight_values
    if subnormal_mass <= limits.flush_mass and not (small and subnormal_mass > 0):
        return
    flushes = zero_mass > limits.flush_mass or (small and zero_mass > 0)
    nonzero = int(np.count_nonzero(magnitudes))
    evidence = {"below_min_normal": int(np.count_nonzero((magnitudes > 0) & (magnitudes < FP16_MIN_NORMAL))),
                "to_zero": int(np.count_nonzero((magnitudes > 0) & (magnitudes < FP16_TINY))),
                "nonzero_values": nonzero, "subnormal_mass": subnormal_mass, "to_zero_mass": zero_mass,
                "fp16_min_normal": FP16_MIN_NORMAL, "fp16_tiny": FP16_TINY, "amax": float(magnitudes.max())}
    what = ("flush to 0 in fp16" if flushes else
            "are fp16 subnormals (fewer digits; 0 on flush-to-zero hardware)")
    yield Finding(
        Rule.FP16_UNDERFLOW, Severity.WARNING if flushes else Severity.INFO, node, name, evidence,
        f"weight '{name}': values carrying {100 * (zero_mass if flushes else subnormal_mass):.2f}% "
        f"of its sum |w| {what} (largest |w| {evidence['amax']:.3g})",
        "trimtab's fp16 build keeps a node whose weights flush in fp32; to run it in fp16, rescale the "
        "weight (and its consumer's output) into fp16's normal range (>= 6.1e-5)",
    )


def _json_safe(value: Any) -> Any:
    """Evidence values as JSON: numpy scalars -> Python numbers, inf/nan -> strings."""
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    return value
