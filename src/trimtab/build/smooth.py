"""SmoothQuant-style smoothing: move activation outlier channels into the weights before int8.

A transformer's LayerNorm and GELU outputs carry a few channels 10-16x larger than the median
(all-MiniLM-L6-v2: max |x_c| 28.5 against a median of 1.9). One per-tensor activation scale
must cover those channels, so every other channel keeps only a few int8 levels. For
Y = X W (X [..., C], W [C, N]) and any s > 0 per input channel,

    Y = (X diag(1/s)) (diag(s) W),

exact in real arithmetic. With (Xiao et al., SmoothQuant, 2022)

    s_c = max|X_c|^alpha / max|W_c,:|^(1 - alpha),

the activation's channels are evened out and the weight rows (quantized per output column
anyway) absorb the difference. When several MatMuls read the same X (Q, K and V), s is shared:
max|W_c,:| is taken over all of them.

The rewrite: a float `Mul(X, 1/s)` writes a new tensor X_s that the MatMuls read, with their
weights replaced by diag(s) W; other consumers of X (a residual Add, Shape) keep reading X.
The Mul is never folded into a producer's constant (GELU's final `* 0.5` looked like the
place): that breaks ONNX Runtime's Gelu/BiasGelu fusion, which costs more than the Mul (measured
on MiniLM: 1.51x fp32's speed folded vs 1.80x unsmoothed, with Erf/Div/Mul left unfused).
Each inserted Mul costs about 0.5% of MiniLM's int8 time (24 of them: 2.45x -> 2.20x fp32).
Only inputs with outlier channels are smoothed: max_c |X_c| / median_c |X_c| >= `min_outlier_ratio`
(3 by default). MiniLM's attention context (ratio 2-4) gained nothing from it (cosine loss of
quantizing one such input alone: 1e-5 either way) while its LayerNorm (ratio 4-16) and GELU
(5-16) outputs lost 5-10x and 2x less.
X_s's range comes from the per-channel calibration statistic: [min_c(min_c / s_c),
max_c(max_c / s_c)] (min/max: after smoothing no channel dominates, so nothing needs clipping).
`apply_smoothing` returns the new ranges and the mapping X -> X_s, recorded as it rewrites.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trimtab.build._graph import GraphIndex, NameAllocator, replace_nodes
from trimtab.calibrate.ranges import TensorRange

logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.75
DEFAULT_MIN_OUTLIER_RATIO = 3.0
_SCALE_LIMITS = (1e-4, 1e4)  # a smoothing factor outside this only shows a dead channel


@dataclass(frozen=True)
class Smoothing:
    """Smoothing for `build_int8`: `channels` maps a MatMul input to its per-channel calibration
    statistic (`trimtab.calibrate.ChannelRange`, e.g. `Calibration.channels`); `alpha` in (0, 1)
    is the share of each outlier's magnitude moved into the weights; inputs whose outlier ratio
    is below `min_outlier_ratio` are left as they are. On all-MiniLM-L6-v2 (minmax ranges,
    ort-cpu) mean cosine to fp32 by alpha: 0.5 0.984, 0.6 0.9948, 0.7 0.9974, 0.75 0.9975,
    0.8 0.9978, 0.85 0.9980; the worst sentence peaks near 0.7-0.75 (0.9949, 0.9948) and falls
    after (0.85: 0.9922), hence 0.75."""

    channels: Mapping = field(repr=False)
    alpha: float = DEFAULT_ALPHA
    min_outlier_ratio: float = DEFAULT_MIN_OUTLIER_RATIO

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1), got {self.alpha}")
        if not self.min_outlier_ratio >= 0.0:
            raise ValueError(f"min_outlier_ratio must be >= 0, got {self.min_outlier_ratio}")

    def wants(self, activation_amax: np.ndarray) -> bool:
        """True when the channels hold outliers: max / median of max |x_c| >= min_outlier_ratio."""
        amax = np.asarray(activation_amax, dtype=np.float64)
        median = float(np.median(amax)) if amax.size else 0.0
        return median > 0 and float(amax.max()) / median >= self.min_outlier_ratio


def smoothing_factors(activation_amax: np.ndarray, weight_amax: np.ndarray, alpha: float) -> np.ndarray:
    """s_c = a_c^alpha / w_c^(1 - alpha), float32; 1 where a channel never held a value or its
    weights are all zero, clipped to [1e-4, 1e4]."""
    a = np.asarray(activation_amax, dtype=np.float64)
    w = np.asarray(weight_amax, dtype=np.float64)
    valid = (a > 0) & (w > 0)
    s = np.ones_like(a)
    s[valid] = a[valid] ** alpha / w[valid] ** (1.0 - alpha)
    return np.clip(s, *_SCALE_LIMITS).astype(np.float32)


def apply_smoothing(graph: onnx.GraphProto, smoothing: Smoothing, eligible,
                    int8_node=lambda node: True) -> tuple[dict[str, TensorRange], dict[str, str]]:
    """Smooth, in place, every tensor that `eligible(name)` accepts and that feeds MatMuls with a
    constant 2-D weight that `int8_node(node)` accepts (the plan's int8 nodes), given its channel
    statistic. Returns (ranges of the new tensors, {original tensor: smoothed tensor})."""
    index = GraphIndex(graph)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if (node.op_type == "MatMul" and index.is_constant(node.input[1]) and index.array(node.input[1]).ndim == 2
                and int8_node(node)):
            readers.setdefault(node.input[0], []).append(node)
    names = NameAllocator(graph)
    ranges, mapping, inserted = {}, {}, []
    for tensor, nodes in readers.items():
        stats = smoothing.channels.get(tensor)
        if stats is None or not eligible(tensor) or stats.channels != index.array(nodes[0].input[1]).shape[0]:
            continue
        if not smoothing.wants(stats.amax):
            continue
        weight_amax = np.max([np.abs(index.array(node.input[1])).max(axis=1) for node in nodes], axis=0)
        factors = smoothing_factors(stats.amax, weight_amax, smoothing.alpha)
        smoothed = names.new(f"{tensor}_smoothed")
        inverse = _initialiser(graph, names, (1.0 / factors).astype(np.float32), f"{tensor}_smoothing")
        inserted.append(helper.make_node("Mul", [tensor, inverse], [smoothed], name=names.new(f"{tensor}_Smooth")))
        graph.value_info.append(helper.make_tensor_value_info(smoothed, TensorProto.FLOAT, None))
        for node in nodes:
            scaled = index.array(node.input[1]) * factors[:, None]
            node.input[1] = _initialiser(graph, names, scaled.astype(np.float32), f"{node.input[1]}_smoothed")
            node.input[0] = smoothed
        low, high = stats.min / factors, stats.max / factors
        seen = np.isfinite(low)
        lo, hi = (float(low[seen].min()), float(high[seen].max())) if seen.any() else (0.0, 0.0)
        ranges[smoothed] = TensorRange(amax=max(-lo, hi, 0.0), min=lo, max=hi)
        mapping[tensor] = smoothed
    if inserted:
        replace_nodes(graph, list(graph.node) + inserted)
    logger.info("smoothing (alpha %.2f): %d MatMul inputs smoothed", smoothing.alpha, len(mapping))
    return ranges, mapping


def _initialiser(graph: onnx.GraphProto, names: NameAllocator, values: np.ndarray, base: str) -> str:
    name = names.new(base)
    graph.initializer.append(numpy_helper.from_array(values, name))
    return name
