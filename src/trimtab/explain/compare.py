"""Layer-wise comparison of a candidate with its fp32 reference: where error is introduced.

    compare(reference, candidate, dataset, *, batch_size=8, max_samples=64, origin_db=30.0,
            capture_tolerance=1e-6, progress=None) -> CompareResult

For every fp32 tensor t with a counterpart c(t) in the candidate (the build's `tensor_map`; for
a saved artifact without one, the tensor of the same name, or the DequantizeLinear output when
t is read only through one Q -> DQ pair, as the int8 builder places them), two views:

  accumulated  the candidate run end to end, c(t) exposed as an extra output: error inherited
               from everything upstream plus what this node adds;
  local        the candidate's node that writes c(t) run alone, with the Q/DQ (and Casts) on its
               weights and on its own output, fed the fp32 reference values where it reads other
               tensors: the error this node *introduces*. A tensor's quantisation belongs to the
               node that writes it (a graph input's to the nodes that read it), so it is counted
               once.

Numerics: every candidate run here is ONNX Runtime with graph optimisations off, so Q/DQ is
simulated exactly in float (`SIMULATION_NOTE`). Capturing tensors must not change what is
explained: the candidate runs once with and once without the extra outputs and the final
outputs must agree to `capture_tolerance` (relative max-abs difference); the result records the
figure and `capture_changes_outputs`. It also records how far ONNX Runtime's optimised (fused
integer) run is from that simulation (`deployed_max_diff`), for information.

Per tensor, over all samples (streamed: one batch of activations at a time), with r the fp32
value and x the candidate's:

    sqnr_db = 10 log10( sum r^2 / sum (r - x)^2 )      (+inf when x == r)
    cosine  = mean over samples of <x_i, r_i> / (|x_i| |r_i|)
    max_abs = max |r - x|
    rel     = sqrt( sum (r - x)^2 / sum r^2 )

Known limit: a layout op or MaxPool that the ort-cpu int8 build re-quantises with its input's
scale repeats its input's rounding in its local view (fed the unrounded fp32 value); its producer
comes first in graph order, so the origin is unaffected.

The origin is the first node (reference graph order) whose local SQNR is below `origin_db`; when
none is, the node with the largest local error (lowest finite local SQNR).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from trimtab._io import atomic_write_json
from trimtab.errors import InvalidDataError, InvalidModelError
from trimtab.measure.metrics import cosine_per_sample

logger = logging.getLogger(__name__)

SIMULATION_NOTE = "ONNX Runtime CPU, graph optimisations off: Q/DQ simulated exactly in float"
GLUE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "Constant", "Identity"})
MAX_LOCAL_COMPUTE_NODES = 2  # a local sub-graph holding more real ops is not "one node"
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


# --- results ---------------------------------------------------------------------------------


def _num_out(value: float | None) -> float | str | None:
    """JSON has no NaN/inf: NaN -> None, +-inf -> "inf"/"-inf"."""
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def _num_in(value: float | str | None) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class ErrorStats:
    """Error of one tensor against its fp32 reference over all samples (formulas: module doc)."""

    sqnr_db: float
    cosine: float
    max_abs: float
    rel: float
    saturated: float = 0.0  # share of elements left out: candidate +-inf where fp32 exceeds its type

    _KEYS = ("sqnr_db", "cosine", "max_abs", "rel", "saturated")

    def to_dict(self) -> dict:
        return {key: _num_out(getattr(self, key)) for key in self._KEYS}

    @classmethod
    def from_dict(cls, data: Mapping) -> ErrorStats:
        return cls(**{key: _num_in(data.get(key, 0.0)) for key in cls._KEYS})


@dataclass(frozen=True)
class NodeRow:
    """One fp32 tensor written by `node`, its candidate counterpart and both views of its error."""

    node: str
    op_type: str
    tensor: str
    candidate_tensor: str
    accumulated: ErrorStats
    local: ErrorStats | None

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "tensor": self.tensor,
                "candidate_tensor": self.candidate_tensor, "accumulated": self.accumulated.to_dict(),
                "local": self.local.to_dict() if self.local is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping) -> NodeRow:
        local = data.get("local")
        return cls(data["node"], data["op_type"], data["tensor"], data["candidate_tensor"],
                   ErrorStats.from_dict(data["accumulated"]),
                   ErrorStats.from_dict(local) if local is not None else None)


@dataclass
class CompareResult:
    """Per-node rows in reference graph order, the origin of the error and the capture check."""

    reference: str
    candidate: str
    rows: list[NodeRow]
    origin: str | None
    origin_reason: str
    origin_db: float
    capture_changes_outputs: bool
    capture_max_diff: float  # relative max-abs difference of final outputs, with vs without capture
    capture_tolerance: float
    deployed_max_diff: float | None  # same figure, ORT optimised run vs the float simulation
    n_samples: int
    numerics: str = SIMULATION_NOTE
    version: int = field(default=1)

    def worst(self, n: int | None = None) -> list[NodeRow]:
        """Rows by accumulated SQNR, worst first (NaN counts as worst)."""
        def key(row: NodeRow) -> float:
            value = row.accumulated.sqnr_db
            return -math.inf if math.isnan(value) else value
        ranked = sorted(self.rows, key=key)
        return ranked if n is None else ranked[:n]

    def rows_for(self, node: str) -> list[NodeRow]:
        return [row for row in self.rows if row.node == node]

    def to_dict(self) -> dict:
        return {
            "version": self.version, "reference": self.reference, "candidate": self.candidate,
            "numerics": self.numerics, "n_samples": self.n_samples,
            "origin": self.origin, "origin_reason": self.origin_reason, "origin_db": self.origin_db,
            "capture_changes_outputs": self.capture_changes_outputs,
            "capture_max_diff": _num_out(self.capture_max_diff),
            "capture_tolerance": self.capture_tolerance,
            "deployed_max_diff": _num_out(self.deployed_max_diff),
            "rows": [row.to_dict() for row in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> CompareResult:
        deployed = data.get("deployed_max_diff")
        return cls(
            reference=data["reference"], candidate=data["candidate"],
            rows=[NodeRow.from_dict(row) for row in data["rows"]],
            origin=data.get("origin"), origin_reason=data.get("origin_reason", ""),
            origin_db=float(data["origin_db"]),
            capture_changes_outputs=bool(data["capture_changes_outputs"]),
            capture_max_diff=_num_in(data.get("capture_max_diff")),
            capture_tolerance=float(data["capture_tolerance"]),
            deployed_max_diff=None if deployed is None else float(deployed),
            n_samples=int(data["n_samples"]), numerics=data.get("numerics", SIMULATION_NOTE),
            version=int(data.get("version", 1)),
        )

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> CompareResult:
        import json

        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# --- streaming error statistics --------------------------------------------------------------


class _Accumulator:
    """Running sums for ErrorStats; `update` takes one batch of (reference, candidate)."""

    def __init__(self) -> None:
        self.signal = self.noise = self.cos_sum = 0.0
        self.count = self.elements = self.saturated = 0
        self.max_abs = 0.0
        self.shape_error: str | None = None

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        if ref.shape != cand.shape:
            self.shape_error = f"shapes differ: fp32 {list(ref.shape)}, candidate {list(cand.shape)}"
            return
        if ref.size == 0:
            return
        self.elements += ref.size
        dtype = np.asarray(candidate).dtype
        if dtype.kind == "f" and dtype.itemsize < 8:
            # A value beyond the candidate type's range (fp16: an attention mask's -3.4e38) becomes
            # +-inf there: counted in `saturated`, left out of the sums (it would make them inf).
            saturated = np.isinf(cand) & (np.abs(ref) > np.finfo(dtype).max) & (np.sign(cand) == np.sign(ref))
            if saturated.any():
                self.saturated += int(saturated.sum())
                ref, cand = np.where(saturated, 0.0, ref), np.where(saturated, 0.0, cand)
        diff = cand - ref
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(diff * diff))
        largest = float(np.max(np.abs(diff)))
        self.max_abs = math.nan if math.isnan(largest) or math.isnan(self.max_abs) else max(self.max_abs, largest)
        rows = (ref.shape[0], -1) if ref.ndim >= 1 else (1, -1)
        cosines = cosine_per_sample(cand.reshape(rows), ref.reshape(rows))
        self.cos_sum += float(np.sum(cosines))
        self.count += len(cosines)

    def result(self) -> ErrorStats | None:
        if self.shape_error is not None or self.count == 0:
            return None
        signal, noise = self.signal, self.noise
        if math.isnan(noise) or math.isnan(signal) or (math.isinf(noise) and math.isinf(signal)):
            sqnr = rel = math.nan
        elif noise == 0.0 or math.isinf(signal):
            sqnr, rel = math.inf, 0.0
        elif signal == 0.0 or math.isinf(noise):
            sqnr, rel = -math.inf, math.inf
        else:
            sqnr = 10.0 * math.log10(self.signal / self.noise)
            rel = math.sqrt(self.noise / self.signal)
        return ErrorStats(sqnr, self.cos_sum / self.count, self.max_abs, rel, self.saturated / self.elements)


def output_gap(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> float:
    """max over outputs of max|expected - actual| / max|expected| (NaN in the same places counts
    as equal; 0 when identical; inf when a zero output became non-zero or an output is missing)."""
    gap = 0.0
    for name, want in expected.items():
        if name not in actual or np.shape(actual[name]) != np.shape(want):
            return math.inf
        a, b = np.asarray(want, np.float64), np.asarray(actual[name], np.float64)
        same_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(same_nan, 0.0, np.abs(a - b))
        largest = float(np.max(diff)) if diff.size else 0.0
        if math.isnan(largest):
            return math.inf
        if largest == 0.0:
            continue
        scale = float(np.nanmax(np.abs(a))) if not np.all(np.isnan(a)) else 0.0
        gap = max(gap, largest / scale if scale > 0 else math.inf)
    return gap


# --- what to compare -------------------------------------------------------------------------


@dataclass
class _Pair:
    node: str
    op_type: str
    tensor: str  # fp32 tensor
    carrier: str  # candidate tensor carrying its value
    own: frozenset  # the reference node's outputs and their carriers (not stop points)
    stats: _Accumulator = field(default_factory=_Accumulator)
    local: _Accumulator | None = None
    local_graph: Any = None  # (builder args) until the first batch gives input ranks
    backend: Any = None


class _GraphView:
    """Producers, initialisers, graph inputs and element types of one graph."""

    def __init__(self, proto: onnx.ModelProto, infer_types: bool = False) -> None:
        graph = proto.graph
        self.proto = proto
        self.nodes = list(graph.node)  # one wrapper per node, so positions can key them
        self.position = {name: i for i, node in enumerate(self.nodes) for name in node.output if name}
        self.producer = {name: self.nodes[i] for name, i in self.position.items()}
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initialisers = {init.name: init for init in graph.initializer}
        self.inputs = [value.name for value in graph.input if value.name not in self.initialisers]
        self.outputs = [value.name for value in graph.output]
        typed = proto
        if infer_types:
            from trimtab._onnx_io import is_large, split

            try:  # over 2 GB, on the graph without its weights' data (types need only dims and dtypes)
                typed = onnx.shape_inference.infer_shapes(split(proto)[0] if is_large(proto) else proto)
            except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:  # > 2 GB or unusual
                logger.debug("shape inference failed on the candidate: %s", exc)
        self.types = {value.name: value.type.tensor_type.elem_type
                      for value in list(typed.graph.input) + list(typed.graph.output) + list(typed.graph.value_info)
                      if value.type.HasField("tensor_type")}

    def tensors(self) -> set[str]:
        return set(self.producer) | set(self.inputs)


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def _carrier_by_structure(name: str, cand: _GraphView) -> str:
    """Without a recorded map: the tensor itself, or the DequantizeLinear output when the only
    reader of `name` is one QuantizeLinear read only by one DequantizeLinear (a quantised group
    output: every consumer reads the DQ)."""
    readers = cand.consumers.get(name, [])
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear" and name not in cand.outputs:
        after = cand.consumers.get(readers[0].output[0], [])
        if len(after) == 1 and after[0].op_type == "DequantizeLinear":
            return after[0].output[0]
    return name


def _pairs(ref: _GraphView, cand: _GraphView, tensor_map: Mapping[str, str] | None) -> list[_Pair]:
    """One pair per float output of each reference node with a counterpart in the candidate."""
    present = cand.tensors()
    pairs = []
    for node in ref.nodes:
        found = []
        for name in node.output:
            if not name or ref.types.get(name, TensorProto.FLOAT) not in _FLOAT_TYPES:
                continue
            carrier = tensor_map.get(name) if tensor_map is not None else (
                _carrier_by_structure(name, cand) if name in present else None)
            if carrier is not None and carrier in cand.producer:
                found.append((name, carrier))
        own = frozenset(node.output) | {carrier for _, carrier in found}
        pairs += [_Pair(_label(node), node.op_type, name, carrier, own) for name, carrier in found]
    return pairs


def _stops(pairs: list[_Pair], ref: _GraphView, cand: _GraphView) -> dict[str, str]:
    """Candidate tensor -> fp32 tensor whose reference value a local sub-graph is fed there."""
    stops = {name: name for name in ref.inputs if name in cand.inputs}
    # tensors the build left alone (shapes, indices, ...) keep their names: fed as they are
    stops.update({name: name for name in ref.producer if name in cand.producer})
    for pair in pairs:
        stops[pair.carrier] = pair.tensor
    return stops


def _local_nodes(pair: _Pair, cand: _GraphView, stops: Mapping[str, str]):
    """Walk back from the carrier to the fp32 stop points: (nodes, {input: fp32 tensor},
    initialisers), or None when that is not one node plus its Q/DQ."""
    nodes, feeds, inits, seen, compute = {}, {}, set(), set(), 0
    todo = [pair.carrier]
    while todo:
        name = todo.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in stops and name not in pair.own:
            feeds[name] = stops[name]
        elif name in cand.initialisers:
            inits.add(name)
        elif name in cand.producer:
            node, position = cand.producer[name], cand.position[name]
            if position in nodes:
                continue
            if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
                return None
            compute += node.op_type not in GLUE_OPS
            if compute > MAX_LOCAL_COMPUTE_NODES:
                return None
            nodes[position] = node
            todo.extend(node.input)
        else:
            return None  # a graph input no fp32 tensor feeds
    return [nodes[position] for position in sorted(nodes)], feeds, inits


def _local_model(pair: _Pair, spec, cand: _GraphView, ranks: Mapping[str, int]) -> onnx.ModelProto:
    nodes, feeds, inits = spec
    inputs = [helper.make_tensor_value_info(name, cand.types.get(name, TensorProto.FLOAT),
                                            [f"d{i}" for i in range(ranks[name])]) for name in sorted(feeds)]
    output = onnx.ValueInfoProto(name=pair.carrier)
    graph = helper.make_graph(nodes, f"local_{pair.node}", inputs, [output],
                              [cand.initialisers[name] for name in sorted(inits)])
    model = helper.make_model(graph, opset_imports=list(cand.proto.opset_import))
    model.ir_version = cand.proto.ir_version
    return model


# --- the run ---------------------------------------------------------------------------------


def _resolve_reference(reference) -> tuple[onnx.ModelProto, str]:
    if isinstance(reference, onnx.ModelProto):
        return reference, reference.graph.name or "reference"
    if hasattr(reference, "proto"):
        return reference.proto, getattr(reference, "name", "reference")
    from trimtab.load import load_model

    model = load_model(reference)
    return model.proto, model.name


def _resolve_candidate(candidate) -> tuple[onnx.ModelProto, dict | None, str]:
    if isinstance(candidate, tuple):
        proto, tensor_map = candidate
        return proto, dict(tensor_map) if tensor_map is not None else None, proto.graph.name or "candidate"
    if isinstance(candidate, onnx.ModelProto):
        return candidate, None, candidate.graph.name or "candidate"
    if hasattr(candidate, "tensor_map"):
        return candidate.proto, dict(candidate.tensor_map) or None, candidate.name
    return onnx.load(str(candidate)), None, Path(candidate).stem


def _batches(dataset, batch_size: int, max_samples: int):
    seen = 0
    for batch in dataset.batches(batch_size):
        take = min(len(batch.sources), max_samples - seen)
        if take <= 0:
            return
        yield {name: value[:take] for name, value in batch.inputs.items()}, take
        seen += take


def compare(
    reference,
    candidate,
    dataset,
    *,
    batch_size: int = 8,
    max_samples: int = 64,
    origin_db: float = 30.0,
    capture_tolerance: float = 1e-6,
    progress: Callable[[str, int, int], None] | None = None,
) -> CompareResult:
    """Compare `candidate` (an Artifact, a (proto, tensor_map) pair, or an ONNX proto/path whose
    tensors of the same name count) with `reference` (a Model, proto, path or example:NAME) on
    up to `max_samples` samples of `dataset`. See the module docstring for what is measured."""
    if batch_size < 1 or max_samples < 1:
        raise ValueError(f"batch_size and max_samples must be >= 1, got {batch_size} and {max_samples}")
    ref_proto, ref_name = _resolve_reference(reference)
    cand_proto, tensor_map, cand_name = _resolve_candidate(candidate)
    ref, cand = _GraphView(ref_proto, infer_types=True), _GraphView(cand_proto, infer_types=True)
    pairs = _pairs(ref, cand, tensor_map)
    if not pairs:
        raise InvalidModelError(
            f"no tensor of the reference '{ref_name}' has a counterpart in the candidate '{cand_name}'",
            hint="compare a candidate with the fp32 model it was built from (pass the Artifact to keep its tensor map)",
        )
    stops = _stops(pairs, ref, cand)
    for pair in pairs:
        pair.local_graph = _local_nodes(pair, cand, stops)
        pair.local = _Accumulator() if pair.local_graph is not None else None
    logger.info("compare %s vs %s: %d tensors, %d with a local view", cand_name, ref_name, len(pairs),
                sum(pair.local is not None for pair in pairs))
    state = _run(ref_proto, cand_proto, pairs, cand, _batches(dataset, batch_size, max_samples),
                 min(max_samples, len(dataset)), progress)
    if state["samples"] == 0:
        raise InvalidDataError("the dataset gave no samples to compare on", hint="pass a dataset with samples")
    rows = _rows(pairs)
    origin, reason = pick_origin(rows, origin_db)
    changed = not state["capture_gap"] <= capture_tolerance
    if changed:
        logger.warning("capturing intermediate tensors changed the final outputs (relative max diff %.3g > %.3g)",
                       state["capture_gap"], capture_tolerance)
    return CompareResult(ref_name, cand_name, rows, origin, reason, origin_db, changed, state["capture_gap"],
                         capture_tolerance, state["deployed_gap"], state["samples"])


def _run(ref_proto, cand_proto, pairs, cand: _GraphView, batches, total: int, progress) -> dict:
    from trimtab.backends.ort_cpu import OrtCpuBackend

    ref_outputs = sorted({pair.tensor for pair in pairs}
                         | {name for pair in pairs if pair.local_graph for name in pair.local_graph[1].values()})
    backends = {
        "ref": OrtCpuBackend(ref_proto, optimize=False, extra_outputs=ref_outputs, spin=False),
        "plain": OrtCpuBackend(cand_proto, optimize=False, spin=False),
        "capture": OrtCpuBackend(cand_proto, optimize=False, extra_outputs=[p.carrier for p in pairs], spin=False),
        "deployed": OrtCpuBackend(cand_proto, spin=False),
    }
    state = {"capture_gap": 0.0, "deployed_gap": 0.0, "samples": 0}
    try:
        for feeds, count in batches:
            values = dict(feeds)
            values.update(backends["ref"].infer(feeds))
            plain = backends["plain"].infer(feeds)
            captured = backends["capture"].infer(feeds)
            deployed = backends["deployed"].infer(feeds)
            state["capture_gap"] = max(state["capture_gap"], output_gap(plain, {k: captured[k] for k in plain}))
            state["deployed_gap"] = max(state["deployed_gap"], output_gap(plain, deployed))
            for pair in pairs:
                pair.stats.update(values[pair.tensor], captured[pair.carrier])
                if pair.local is not None:
                    _update_local(pair, cand, values)
            state["samples"] += count
            if progress is not None:
                progress("compare", state["samples"], total)
    finally:
        for backend in list(backends.values()) + [pair.backend for pair in pairs if pair.backend is not None]:
            backend.close()
    return state


def _update_local(pair: _Pair, cand: _GraphView, values: Mapping[str, np.ndarray]) -> None:
    from trimtab.backends.ort_cpu import OrtCpuBackend

    _, feeds_from, _ = pair.local_graph
    feeds = {}
    for name, source in feeds_from.items():
        dtype = helper.tensor_dtype_to_np_dtype(cand.types.get(name, TensorProto.FLOAT))
        with np.errstate(over="ignore"):  # fp16 inputs overflow to +-inf exactly as the candidate's Casts do
            feeds[name] = np.asarray(values[source]).astype(dtype, copy=False)
    if pair.backend is None:
        model = _local_model(pair, pair.local_graph, cand, {name: value.ndim for name, value in feeds.items()})
        pair.backend = OrtCpuBackend(model, optimize=False, threads=1, spin=False).prepare()
    out = pair.backend.infer(feeds)[pair.carrier]
    pair.local.update(values[pair.tensor], out)


def _rows(pairs: list[_Pair]) -> list[NodeRow]:
    rows = []
    for pair in pairs:
        accumulated = pair.stats.result()
        if accumulated is None:
            if pair.stats.shape_error:
                logger.warning("%s (%s): %s; left out", pair.node, pair.tensor, pair.stats.shape_error)
            continue
        local = pair.local.result() if pair.local is not None else None
        rows.append(NodeRow(pair.node, pair.op_type, pair.tensor, pair.carrier, accumulated, local))
    return rows


def pick_origin(rows: list[NodeRow], origin_db: float) -> tuple[str | None, str]:
    """The first row (graph order) whose local SQNR is below `origin_db` (NaN counts as below);
    else the row with the lowest finite local SQNR; None when every local view is exact."""
    for row in rows:
        if row.local is not None and not row.local.sqnr_db >= origin_db:
            return row.node, f"first node whose local SQNR ({row.local.sqnr_db:.1f} dB) is below {origin_db:g} dB"
    finite = [row for row in rows if row.local is not None and math.isfinite(row.local.sqnr_db)]
    if not finite:
        return None, "no node introduces error (every local view is exact or missing)"
    worst = min(finite, key=lambda row: row.local.sqnr_db)
    return worst.node, (f"no node below {origin_db:g} dB; largest local error "
                        f"({worst.local.sqnr_db:.1f} dB)")
