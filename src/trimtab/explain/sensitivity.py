"""Sensitivity ranking: which quantized nodes, returned to fp32 alone, buy back the most accuracy.

    rank_sensitivity(model, ranges, flavour, dataset) -> SensitivityResult  (saved as layers.json)

1. Build the all-int8 candidate (`build_int8` with `base_plan`, default all int8) and run it and
   fp32 over `dataset` with `OrtCpuBackend` (optimisation on: the fused integer kernels are what
   the target runs). Keep the `subset` samples with the worst per-sample error.
2. Group the nodes `build_int8` quantized (`artifact.notes["quantized"]`) that must change
   together: per quantized activation, the nodes that must all be fp32 for it to be float again
   (its readers: one Q/DQ shared by several consumers, e.g. attention's Q/K/V MatMuls, is one
   group; for ort-cpu also its writer, whose output Q closes the fused kernel, with the
   Relu/Clip folded into it). A node alone in fp32 between int8 neighbours would still read and
   write quantized tensors and only gain its float weights.
3. Order the groups by a cheap prior (the local quantization SQNR of each group's activations
   and weights on fp32 values: lowest first), then, until the time budget runs out, rebuild with
   only that group mapped to fp32 (plan rule name -> fp32 on top of `base_plan`) and score the
   final output on the subset with the proxy:
     sqnr: SQNR = 10 log10(sum r^2 / sum (r - x)^2) in dB over the subset (higher is better);
     kl:   mean_i KL(softmax(r_i) || softmax(x_i)) of the logits (lower is better; classifiers).
     top1: the fraction of subset samples whose top-1 class differs from fp32's, tie-broken by
           the mean KL (value = disagreement + k / (1 + k) / N with k the mean KL: the KL term
           is under one sample's flip, so it only orders plans that flip as many; lower is
           better; classifiers, where the metric is top-1 agreement).
   gain = improvement over the all-int8 proxy (dB for sqnr, nats for kl; positive = better).
   Groups left when the budget runs out are listed as unranked, in prior order.
4. mode="greedy" (conditional ranking; mode="oneshot", the default, stops at 3): the first pass
   as in 3 fixes rank 1; for ranks 2..`depth`, the `candidates` best groups of the first pass
   not yet chosen are rebuilt again, each together with the groups already chosen in fp32, and
   the one with the best proxy takes the rank. A group that only helps with another (or that
   repeats what a chosen one already bought back) is ranked by what it adds. Those rows' proxy
   and gain are cumulative (the plan with this group and every row above it in fp32, over
   all-int8); rows after `depth` keep the first-pass order and values. Each greedy step costs
   up to `candidates` rebuilds; when the budget runs out mid-step, the best of the candidates
   scored so far is taken, and no further steps run (`result.conditional` counts the ranks
   chosen conditionally, rank 1 included).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import numpy_helper

from trimtab._io import atomic_write_json
from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.build.int8 import FLAVOURS, build_int8
from trimtab.build.plan import MatchKind, PrecisionPlan
from trimtab.data import Dataset
from trimtab.errors import InvalidDataError
from trimtab.options import Int8Flavour, Precision

if TYPE_CHECKING:
    from trimtab.build.artifact import Artifact
    from trimtab.build.smooth import Smoothing
    from trimtab.calibrate.cache import Calibration
    from trimtab.calibrate.ranges import TensorRange

logger = logging.getLogger(__name__)

BATCH_SIZE = 8
_clock = time.perf_counter  # seconds; a test swaps in a fake clock
FORMAT = "trimtab.layers/1"


class Proxy(StrEnum):
    SQNR = "sqnr"  # output SQNR in dB vs fp32 (higher is better)
    KL = "kl"  # KL divergence of softmax(logits) from fp32's (lower is better)
    TOP1 = "top1"  # top-1 disagreement with fp32, tie-broken by KL (lower is better)


class Mode(StrEnum):
    ONESHOT = "oneshot"  # every group scored alone against the base plan
    GREEDY = "greedy"  # ranks 2..depth re-scored with the groups above them in fp32


# --- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeGroup:
    """Nodes that return to fp32 together. `tensors`: the quantized activations they share;
    `prior`: the group's local quantization SQNR in dB (lowest of its activations and weights)."""

    group: str
    nodes: tuple[str, ...]
    op_types: tuple[str, ...]
    tensors: tuple[str, ...] = ()
    prior: float = math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "nodes": list(self.nodes), "op_types": list(self.op_types),
                "tensors": list(self.tensors), "prior_sqnr_db": _num_out(self.prior)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeGroup:
        return cls(data["group"], tuple(data["nodes"]), tuple(data["op_types"]), tuple(data.get("tensors", ())),
                   _num_in(data.get("prior_sqnr_db", "inf")))


@dataclass(frozen=True)
class RankedGroup:
    """One row of layers.json: `proxy` with this group in fp32, `gain` over all-int8."""

    rank: int
    group: NodeGroup
    proxy: float
    gain: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, **self.group.to_dict(), "proxy": _num_out(self.proxy),
                "gain": _num_out(self.gain), "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankedGroup:
        return cls(int(data["rank"]), NodeGroup.from_dict(data), _num_in(data["proxy"]), _num_in(data["gain"]),
                   float(data["seconds"]))


@dataclass
class SensitivityResult:
    """Ranked groups (best gain first), what was left unranked, and the reference proxies.
    Truthy when every group was ranked (the time budget sufficed)."""

    proxy: str
    flavour: str
    base_proxy: float  # all-int8 (base plan) on the subset
    fp32_proxy: float  # fp32 against itself: inf dB (sqnr) or 0 (kl)
    rows: list[RankedGroup] = field(default_factory=list)
    unranked: list[NodeGroup] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # sources of the subset, worst first
    dataset_size: int = 0
    seconds: float = 0.0
    time_budget_s: float = 0.0
    base_plan: dict[str, Any] = field(default_factory=dict)
    mode: str = Mode.ONESHOT.value
    conditional: int = 0  # leading rows chosen conditionally (greedy mode); their proxy/gain are cumulative

    def __bool__(self) -> bool:
        return not self.unranked

    def top_nodes(self, k: int) -> list[str]:
        """Node names of the `k` best-ranked groups (folded activations included), each once
        (groups overlap: a node belongs to the groups of its input and its output tensors)."""
        return list(dict.fromkeys(name for row in self.rows[:k] for name in row.group.nodes))

    def plan(self, k: int) -> PrecisionPlan:
        """The base plan with the `k` best-ranked groups mapped to fp32."""
        plan = PrecisionPlan.from_dict(self.base_plan) if self.base_plan else PrecisionPlan.uniform(Precision.INT8)
        for name in self.top_nodes(k):
            plan = plan.with_rule(MatchKind.NAME, name, Precision.FP32)
        return plan

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "proxy": self.proxy, "flavour": self.flavour,
            "base_proxy": _num_out(self.base_proxy), "fp32_proxy": _num_out(self.fp32_proxy),
            "rows": [row.to_dict() for row in self.rows],
            "unranked": [group.to_dict() for group in self.unranked],
            "samples": list(self.samples), "dataset_size": self.dataset_size,
            "seconds": round(self.seconds, 3), "time_budget_s": self.time_budget_s,
            "base_plan": self.base_plan, "mode": self.mode, "conditional": self.conditional,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensitivityResult:
        if data.get("format") != FORMAT:
            raise ValueError(f"expected a {FORMAT!r} document, got format {data.get('format')!r}")
        return cls(
            proxy=data["proxy"], flavour=data["flavour"],
            base_proxy=_num_in(data["base_proxy"]), fp32_proxy=_num_in(data["fp32_proxy"]),
            rows=[RankedGroup.from_dict(row) for row in data["rows"]],
            unranked=[NodeGroup.from_dict(group) for group in data["unranked"]],
            samples=list(data.get("samples", [])), dataset_size=int(data.get("dataset_size", 0)),
            seconds=float(data["seconds"]), time_budget_s=float(data["time_budget_s"]),
            base_plan=dict(data.get("base_plan", {})),
            mode=data.get("mode", Mode.ONESHOT.value), conditional=int(data.get("conditional", 0)),
        )

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SensitivityResult:
        import json

        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _num_out(value: float) -> float | str:
    """JSON has no inf/nan: they are written as strings."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _num_in(value: float | str) -> float:
    return float(value)


# --- proxies: pure numpy -------------------------------------------------------------------------
def sample_errors(proxy: Proxy, candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-sample statistics [N, 2] from which the proxy is summed:
    sqnr: (sum_j r_ij^2, sum_j (r_ij - x_ij)^2);  kl: (KL_i, 1);  top1: (KL_i, d_i) with
    KL_i = sum_c p_ic (log p_ic - log q_ic), p = softmax(r_i), q = softmax(x_i) (float64) and
    d_i = 1 where argmax x_i != argmax r_i, else 0."""
    cand = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    if proxy is Proxy.SQNR:
        return np.stack([np.sum(ref**2, axis=1), np.sum((ref - cand) ** 2, axis=1)], axis=1)
    log_p, log_q = _log_softmax(ref), _log_softmax(cand)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=1)
    second = (np.argmax(cand, axis=1) != np.argmax(ref, axis=1)).astype(np.float64) if proxy is Proxy.TOP1 \
        else np.ones(len(kl))
    return np.stack([np.maximum(kl, 0.0), second], axis=1)


def proxy_value(proxy: Proxy, stats: np.ndarray) -> float:
    """sqnr: 10 log10(sum signal / sum noise) dB (inf when exact); kl: mean KL_i;
    top1: mean d_i + k / (1 + k) / N with k = mean KL_i (the tie-break stays under 1/N)."""
    if proxy is Proxy.KL:
        return float(np.mean(stats[:, 0]))
    if proxy is Proxy.TOP1:
        mean_kl = float(np.mean(stats[:, 0]))
        return float(np.mean(stats[:, 1])) + mean_kl / (1.0 + mean_kl) / len(stats)
    signal, noise = float(np.sum(stats[:, 0])), float(np.sum(stats[:, 1]))
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


def worst_samples(proxy: Proxy, stats: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` samples with the largest error (noise/signal or KL; top1: the
    disagreeing samples first, then by KL), worst first."""
    if proxy is Proxy.TOP1:
        return np.lexsort((-stats[:, 0], -stats[:, 1]))[:count]
    if proxy is Proxy.KL:
        error = stats[:, 0]
    else:
        error = stats[:, 1] / np.maximum(stats[:, 0], np.finfo(np.float64).tiny)
    return np.argsort(-error, kind="stable")[:count]


def _gain(proxy: Proxy, value: float, base: float) -> float:
    if proxy is not Proxy.SQNR:
        return base - value
    if math.isinf(value) and math.isinf(base):
        return 0.0
    return value - base


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


# --- the ranking -------------------------------------------------------------------------------
@dataclass
class _Runner:
    """Builds and runs plans against the fp32 reference on one list of samples."""

    model: Any
    ranges: Mapping[str, TensorRange]
    flavour: Int8Flavour
    skip: frozenset[str]
    smoothing: Smoothing | None
    proxy: Proxy

    def build(self, plan: PrecisionPlan) -> Artifact:
        return build_int8(self.model, self.ranges, self.flavour, plan=plan, skip_tensors=self.skip,
                          smoothing=self.smoothing)

    def stats(self, proto, samples: list, reference: list[np.ndarray] | None = None):
        """Per-sample stats [N, 2] of `proto` vs fp32 (and the fp32 outputs per batch)."""
        output = self.model.output_names[0]
        fp32 = None if reference is not None else OrtCpuBackend(self.model.proto).prepare()
        candidate = OrtCpuBackend(proto).prepare()
        parts, refs = [], []
        try:
            for i, batch in enumerate(Dataset(samples).batches(BATCH_SIZE)):
                ref = reference[i] if reference is not None else fp32.infer(batch.inputs)[output]
                refs.append(ref)
                parts.append(sample_errors(self.proxy, candidate.infer(batch.inputs)[output], ref))
        finally:
            candidate.close()
            if fp32 is not None:
                fp32.close()
        return np.concatenate(parts), refs


def rank_sensitivity(
    model,
    ranges: Mapping[str, TensorRange],
    flavour: Int8Flavour | str,
    dataset: Iterable,
    *,
    calibration: Calibration | None = None,
    base_plan: PrecisionPlan | None = None,
    proxy: Proxy | str = Proxy.SQNR,
    subset: int = 16,
    time_budget_s: float = 60.0,
    smoothing: Smoothing | None = None,
    mode: Mode | str = Mode.ONESHOT,
    depth: int = 3,
    candidates: int = 12,
    focus_ops: Iterable[str] = (),
) -> SensitivityResult:
    """Rank the quantized node groups of `model` by the proxy gain of returning each alone to
    fp32 (see the module docstring). `calibration` supplies `float_tensors` to keep float (as
    `build_int8(skip_tensors=...)`); `smoothing` is passed to `build_int8`. `dataset` is any
    iterable of Samples (a Dataset); the `subset` worst samples are scored. mode="greedy" re-ranks
    positions 2..`depth` conditionally on the groups above, among the `candidates` best of the
    first pass (module docstring, step 4). Groups containing a node of a `focus_ops` type are
    tried first (prior order within each part), so a short budget spends itself on them."""
    start = _clock()
    proxy, flavour, mode = Proxy(proxy), Int8Flavour(flavour), Mode(mode)
    if depth < 1 or candidates < 1:
        raise ValueError(f"depth and candidates must be >= 1, got {depth} and {candidates}")
    if subset < 1:
        raise ValueError(f"subset must be >= 1 sample, got {subset}")
    if time_budget_s < 0:
        raise ValueError(f"time_budget_s must be >= 0, got {time_budget_s}")
    base_plan = base_plan or PrecisionPlan.uniform(Precision.INT8)
    skip = frozenset(calibration.float_tensors) if calibration is not None else frozenset()
    runner = _Runner(model, ranges, flavour, skip, smoothing, proxy)
    samples = list(dataset)
    if not samples:
        raise InvalidDataError("rank_sensitivity got an empty dataset", hint="pass at least one sample")
    base = runner.build(base_plan)
    full_stats, _ = runner.stats(base.proto, samples)
    picked = [samples[i] for i in worst_samples(proxy, full_stats, subset)]
    base_stats, reference = runner.stats(base.proto, picked)
    groups = _order_by_prior(node_groups(model, base), model, base, picked)
    focus = set(focus_ops)
    groups.sort(key=lambda group: not focus.intersection(group.op_types))  # stable
    result = SensitivityResult(
        proxy=proxy.value, flavour=flavour.value, base_proxy=proxy_value(proxy, base_stats),
        fp32_proxy=math.inf if proxy is Proxy.SQNR else 0.0,
        samples=[sample.source for sample in picked], dataset_size=len(samples),
        time_budget_s=float(time_budget_s), base_plan=base_plan.to_dict(), mode=mode.value)
    scored = _score_groups(runner, groups, base_plan, picked, reference, result, start)
    scored.sort(key=lambda item: -item[1])  # stable: ties keep prior order
    if mode is Mode.GREEDY and scored:
        scored, result.conditional = _greedy(runner, scored, base_plan, picked, reference, result, start,
                                             depth, candidates)
    result.rows = [RankedGroup(rank, group, value, gain, seconds)
                   for rank, (group, gain, value, seconds) in enumerate(scored, start=1)]
    result.seconds = _clock() - start
    logger.info("sensitivity: %d groups ranked, %d unranked in %.1f s (base %s %.4g)", len(result.rows),
                len(result.unranked), result.seconds, proxy.value, result.base_proxy)
    return result


def _score_groups(runner: _Runner, groups: list[NodeGroup], base_plan: PrecisionPlan, picked: list,
                  reference: list[np.ndarray], result: SensitivityResult, start: float) -> list[tuple]:
    """Evaluate groups in order until the next one would likely overrun the budget."""
    scored: list[tuple] = []
    for position, group in enumerate(groups):
        elapsed = _clock() - start
        mean_cost = sum(item[3] for item in scored) / len(scored) if scored else 0.0
        if elapsed + mean_cost > result.time_budget_s:
            result.unranked = groups[position:]
            logger.info("sensitivity: time budget %.1f s reached after %d groups", result.time_budget_s, position)
            break
        began = _clock()
        plan = base_plan
        for name in group.nodes:
            plan = plan.with_rule(MatchKind.NAME, name, Precision.FP32)
        stats, _ = runner.stats(runner.build(plan).proto, picked, reference)
        value = proxy_value(runner.proxy, stats)
        gain = _gain(runner.proxy, value, result.base_proxy)
        scored.append((group, gain, value, _clock() - began))
        logger.debug("sensitivity: %s %s -> %s %.4g (gain %.4g)", group.group, list(group.nodes),
                     runner.proxy.value, value, gain)
    return scored


def _with_fp32(plan: PrecisionPlan, groups: Iterable[NodeGroup]) -> PrecisionPlan:
    for name in dict.fromkeys(name for group in groups for name in group.nodes):
        plan = plan.with_rule(MatchKind.NAME, name, Precision.FP32)
    return plan


def _greedy(runner: _Runner, scored: list[tuple], base_plan: PrecisionPlan, picked: list,
            reference: list[np.ndarray], result: SensitivityResult, start: float, depth: int,
            candidates: int) -> tuple[list[tuple], int]:
    """Re-rank positions 2..depth of `scored` (first-pass order, best first) conditionally: each
    step rebuilds the first `candidates` unchosen groups with the chosen ones in fp32 and takes
    the best. Returns the new order (chosen first, the rest in first-pass order) and how many
    ranks were chosen (rank 1 counts: it is the first pass's best)."""
    chosen = [scored[0]]
    pool = list(scored[1:])
    costs = [item[3] for item in scored]
    while len(chosen) < depth and pool:
        trial: list[tuple] = []
        for item in pool[:candidates]:
            mean_cost = sum(costs) / len(costs)
            if _clock() - start + mean_cost > result.time_budget_s:
                logger.info("sensitivity: time budget %.1f s reached in greedy step %d", result.time_budget_s,
                            len(chosen) + 1)
                break
            began = _clock()
            plan = _with_fp32(base_plan, [entry[0] for entry in chosen] + [item[0]])
            stats, _ = runner.stats(runner.build(plan).proto, picked, reference)
            value = proxy_value(runner.proxy, stats)
            seconds = _clock() - began
            costs.append(seconds)
            trial.append((item[0], _gain(runner.proxy, value, result.base_proxy), value, seconds))
        if not trial:
            break
        best = max(range(len(trial)), key=lambda i: trial[i][1])  # first of equals: first-pass order
        chosen.append(trial[best])
        pool = [item for item in pool if item[0] is not trial[best][0]]
        logger.info("sensitivity: greedy rank %d: %s (cumulative %s %.4g)", len(chosen), trial[best][0].group,
                    runner.proxy.value, trial[best][2])
        if len(trial) < min(candidates, len(pool) + 1):
            break  # budget ran out mid-step
    return chosen + pool, len(chosen)


# --- grouping --------------------------------------------------------------------------------
def node_groups(model, artifact: Artifact) -> list[NodeGroup]:
    """One group per quantized activation tensor t (a QuantizeLinear/DequantizeLinear pair the
    build inserted): the nodes that must all return to fp32 for t to be float again, in graph
    order. They are t's quantized readers (one Q/DQ shared by several consumers, e.g. attention's
    Q/K/V MatMuls, is one group) plus, where the flavour closes a fused group with a Q on the
    output (ort-cpu), t's quantized writer, with the Relu/Clip folded into its output range:
    that Q stays as long as its writer is int8 (a Gemm/MatMul's output Q only exists for
    quantized readers, so their writer is not needed). Groups with the same nodes are merged;
    `artifact.notes["quantized"]` lists every candidate node."""
    quantized = set(artifact.notes.get("quantized", []))
    folded = set(artifact.notes.get("folded_activations", []))
    writer_kept = FLAVOURS[Int8Flavour(artifact.flavour)].quantize_outputs
    producer = {out: node for node in artifact.proto.graph.node for out in node.output}
    readers = _quantized_readers(artifact, producer)
    groups: dict[tuple[str, ...], tuple[list[str], list[str], list[str]]] = {}
    for tensor, nodes in readers.items():
        members = [node for node in nodes if node.name in quantized]
        writer = producer.get(tensor)
        if writer_kept and writer is not None and writer.name in folded:
            members = [producer[writer.input[0]], writer] + members
        elif writer_kept and writer is not None and writer.name in quantized:
            members = ([] if writer.op_type in ("Gemm", "MatMul") else [writer]) + members
        names = tuple(dict.fromkeys(node.name for node in members))
        if not names:
            continue
        entry = groups.setdefault(names, (list(names), [], []))
        if not entry[1]:
            ops = {node.name: node.op_type for node in members}
            entry[1].extend(ops[name] for name in names)
        entry[2].append(tensor)
    return [NodeGroup(f"g{index:03d}", tuple(names), tuple(ops), tuple(tensors))
            for index, (names, ops, tensors) in enumerate(groups.values())]


def _quantized_readers(artifact: Artifact, producer: dict) -> dict[str, list]:
    """fp32 tensor -> nodes that read it through its activation Q/DQ pair, in graph order."""
    result: dict[str, list] = {}
    for node in artifact.proto.graph.node:
        for name in node.input:
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or node.op_type == "QuantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                result.setdefault(q.input[0], []).append(node)
    return result


# --- the cheap prior -------------------------------------------------------------------------
def _order_by_prior(groups: list[NodeGroup], model, artifact: Artifact, samples: list) -> list[NodeGroup]:
    """Groups with their local quantization SQNR (dB: the lowest of each quantized activation's
    whole-tensor and median-channel SQNR on fp32 values of `samples`, and of each weight), lowest
    first; ties keep graph order."""
    qparams = _activation_qparams(artifact)
    # Smoothing adds tensors (its Mul outputs) that the fp32 graph does not have: no prior there.
    known = {out for node in model.proto.graph.node for out in node.output} | set(model.input_names)
    wanted = sorted({t for group in groups for t in group.tensors if t in qparams and t in known})
    noise = _activation_noise(model, wanted, qparams, samples)
    # Smoothing rescales weights before quantizing them: compare only unsmoothed builds.
    weights = {} if artifact.notes.get("smoothed") else _weight_noise(model, artifact)
    priors = []
    for group in groups:
        pairs = [noise[t] for t in group.tensors if t in noise] + [weights[n] for n in group.nodes if n in weights]
        priors.append(min((_db(signal, err) for signal, err in pairs), default=math.inf))
    ranked = [NodeGroup(g.group, g.nodes, g.op_types, g.tensors, p) for g, p in zip(groups, priors)]
    return sorted(ranked, key=lambda group: group.prior)


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


def _activation_qparams(artifact: Artifact) -> dict[str, tuple[float, int, np.dtype]]:
    """fp32 tensor -> (scale, zero point, integer dtype) of the QuantizeLinear the build put on it."""
    inits = {init.name: init for init in artifact.proto.graph.initializer}
    result = {}
    for node in artifact.proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits and node.input[2] in inits:
            zero_point = numpy_helper.to_array(inits[node.input[2]])
            scale = float(numpy_helper.to_array(inits[node.input[1]]).reshape(-1)[0])
            result[node.input[0]] = (scale, int(zero_point.reshape(-1)[0]), zero_point.dtype)
    return result


def _activation_noise(model, tensors: list[str], qparams, samples: list) -> dict[str, tuple[float, float]]:
    """tensor -> (signal, noise) of the whole tensor or of its median channel, whichever has the
    lower SQNR: per channel c (axis 1 of a 4-D tensor, else the last axis), signal_c = sum x_c^2
    and noise_c = sum (x_c - dq(q(x_c)))^2 over fp32 activations of `samples`. The whole tensor
    shows clipped outliers; the median channel shows a range crushed by a few outlier channels,
    which the whole-tensor SQNR (dominated by the outliers) hides."""
    if not tensors:
        return {}
    inputs = set(model.input_names)
    sums: dict[str, list] = {name: [0.0, 0.0] for name in tensors}
    backend = OrtCpuBackend(model.proto, extra_outputs=[t for t in tensors if t not in inputs]).prepare()
    try:
        for batch in Dataset(samples).batches(BATCH_SIZE):
            values = {**backend.infer(batch.inputs), **batch.inputs}
            for name in tensors:
                x = np.asarray(values[name], np.float64)
                scale, zero_point, dtype = qparams[name]
                info = np.iinfo(dtype)
                error = x - (np.clip(np.round(x / scale) + zero_point, info.min, info.max) - zero_point) * scale
                axis = 1 if x.ndim == 4 else x.ndim - 1
                others = tuple(i for i in range(x.ndim) if i != axis)
                sums[name][0] = sums[name][0] + np.sum(x**2, axis=others)
                sums[name][1] = sums[name][1] + np.sum(error**2, axis=others)
    finally:
        backend.close()
    result = {}
    for name, (signal, noise) in sums.items():
        signal, noise = np.atleast_1d(signal), np.atleast_1d(noise)
        db = [_db(float(s), float(n)) for s, n in zip(signal, noise)]
        middle = int(np.argsort(db, kind="stable")[len(db) // 2])
        pairs = [(float(signal.sum()), float(noise.sum())), (float(signal[middle]), float(noise[middle]))]
        result[name] = min(pairs, key=lambda pair: _db(*pair))
    return result


def _weight_noise(model, artifact: Artifact) -> dict[str, tuple[float, float]]:
    """node name -> (sum w^2, sum (w - dq(w))^2) for quantized weights (input 1 of the node)."""
    original = {node.name: node for node in model.proto.graph.node if node.name}
    model_inits = {init.name: init for init in model.proto.graph.initializer}
    inits = {init.name: init for init in artifact.proto.graph.initializer}
    producer = {out: node for node in artifact.proto.graph.node for out in node.output}
    result = {}
    for node in artifact.proto.graph.node:
        source = original.get(node.name)
        if source is None or len(node.input) < 2 or len(source.input) < 2 or source.input[1] not in model_inits:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(model_inits[source.input[1]]).astype(np.float64)
        values = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        axis = next((attr.i for attr in dq.attribute if attr.name == "axis"), 1)
        if scale.size > 1:
            shape = [1] * values.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
        if values.shape != weight.shape:
            continue
        result[node.name] = (float(np.sum(weight**2)), float(np.sum((weight - values * scale) ** 2)))
    return result
