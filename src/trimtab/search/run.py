"""The search stage of `tune`: from the best full-int8 candidate to a verified mixed plan.

    rank     sensitivity groups of the base build (explain/sensitivity.py), on the worst
             validation samples, within part of the time left
    cost     per-node fallback cost, measured with ONNX Runtime's profiler on the fp32 and the
             base int8 artifacts (search/cost.py); on the gpu target, from the engine's own
             per-layer timings of the base build (int8 kernel vs the float path, per linear layer)
    search   prefix search (search/mixed.py); each probe is built, saved under models/search/,
             evaluated on the whole validation set and recorded in state/ at once

Everything it finishes is kept in the run folder's state (trimtab/resume.py), keyed by the base
artifact's sha256, so a killed run resumes with the same ranking, the same costs and the same
verified steps, and evaluates only what is left.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trimtab.options import Precision

log = logging.getLogger(__name__)

RANKING_SHARE = 0.4  # of the time left, at most, for the sensitivity ranking
RANKING_SECONDS = 60.0  # ranking budget without a time limit
PROFILE_RUNS = 20


@dataclass
class SearchInputs:
    """What the search needs from the pipeline."""

    model: Any
    base: Any  # the base Measured candidate (best full int8)
    fp32: Any  # the fp32 Measured candidate
    calibration: Any  # Calibration behind the base candidate
    validation: Any  # Dataset
    feeds: dict  # one bench batch, for profiling
    evaluate: Callable[..., Any]  # (artifact, count=True) -> EvalResult, cached in state by sha256
    passes: Callable[[Any], bool]  # EvalResult -> within the budget under the rule in force
    models_dir: Path
    root: Path
    state: Any  # RunState
    base_sha: str  # sha256 of the base artifact: keys everything saved in state
    budget: float | None = None  # points; aims the search's interpolation probes
    threads: int | None = None
    focus_ops: tuple[str, ...] = ()  # op types the ranking tries first (scenario recsys)
    target: str = "ort-cpu"  # where the candidates run: ort-cpu, or gpu (costs from the gpu engine)
    unquantized: Precision = Precision.FP32  # what the plans' fallback nodes and the rest run in


@dataclass
class SearchRun:
    outcome: Any  # SearchOutcome
    best_artifact: Any = None  # Artifact of the best passing plan, renamed mixed-...
    best_evaluation: Any = None
    best_path: Path | None = None
    ranking_seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def to_dict(self, start_name: str, seconds: float) -> dict[str, Any]:
        data = self.outcome.to_dict()
        data.update(start=start_name, seconds=round(seconds, 3), ranking_seconds=round(self.ranking_seconds, 3),
                    best=self.best_artifact.name if self.best_artifact is not None else None,
                    best_step=self.outcome.best.plan if self.outcome.best is not None else None)
        return data


def run_search(inputs: SearchInputs, *, max_evals: int, deadline: float | None) -> SearchRun:
    from trimtab.search.mixed import order_groups, search

    base_sha = inputs.base_sha
    ranking = _ranking(inputs, base_sha, deadline)
    costs = _costs(inputs, base_sha)
    # Groups the ranking's time budget left unranked stay reachable, after the helpful ones, in the
    # ranking's prior order (gain unknown: 0).
    unranked = [SimpleNamespace(group=group, gain=0.0) for group in ranking.unranked]
    groups = order_groups([*ranking.rows, *unranked], costs)
    order = [group.group for group in groups]
    record = inputs.state.record("search-steps") or {}
    done = {}
    if record.get("base_sha256") == base_sha and record.get("order") == order:
        done = {int(step["k"]): _step_from_record(step, inputs) for step in record.get("steps", [])}
    steps_record = {"base_sha256": base_sha, "order": order, "steps": [s.to_dict() for s in done.values()]}

    def verify(k: int):
        step = _verify(inputs, groups, k, costs)
        steps_record["steps"].append(step.to_dict())
        inputs.state.save_record("search-steps", steps_record)  # the best so far survives a kill
        return step

    outcome = search(groups, verify, done=done, max_evals=max_evals, deadline=deadline,
                     base_drop=float(inputs.base.evaluation.drop_points), budget=inputs.budget)
    run = SearchRun(outcome=outcome, ranking_seconds=ranking.seconds, files=["sensitivity.json"])
    if outcome.best is not None:
        run.best_artifact, run.best_path = _final_artifact(inputs, outcome.best)
        run.best_evaluation = inputs.evaluate(run.best_artifact, count=False)
    return run


def _ranking(inputs: SearchInputs, base_sha: str, deadline: float | None):
    """The sensitivity ranking of the base build: from state when a killed run finished it."""
    from trimtab.build import Smoothing
    from trimtab.explain.sensitivity import SensitivityResult, rank_sensitivity

    record = inputs.state.record("search-ranking")
    if record and record.get("base_sha256") == base_sha:
        try:
            result = SensitivityResult.from_dict(record["result"])
            result.save(inputs.root / "sensitivity.json")
            return result
        except (KeyError, TypeError, ValueError):
            log.info("search: the saved ranking is unreadable; ranking again")
    budget = RANKING_SECONDS
    if deadline is not None:
        budget = max(min(budget, (deadline - time.monotonic()) * RANKING_SHARE), 1.0)
    artifact = inputs.base.artifact
    smoothing = Smoothing(inputs.calibration.channels) if artifact.notes.get("smoothed") else None
    result = rank_sensitivity(inputs.model, inputs.calibration.ranges, artifact.flavour, inputs.validation,
                              calibration=inputs.calibration, time_budget_s=budget, smoothing=smoothing,
                              focus_ops=inputs.focus_ops)
    result.save(inputs.root / "sensitivity.json")
    inputs.state.save_record("search-ranking", {"base_sha256": base_sha, "result": result.to_dict()})
    return result


def _costs(inputs: SearchInputs, base_sha: str) -> dict[str, float]:
    """Per-node fallback cost in ms per bench batch, measured once per base artifact."""
    from trimtab.backends.ort_cpu import OrtCpuBackend
    from trimtab.search.cost import fallback_costs, model_node_times, rate_costs

    record = inputs.state.record("search-costs")
    if record and record.get("base_sha256") == base_sha:
        return {str(k): float(v) for k, v in record["costs_ms"].items()}
    if inputs.target == "gpu":
        costs = _gpu_costs(inputs)
        inputs.state.save_record("search-costs", {"base_sha256": base_sha, "costs_ms": costs})
        return costs
    times = {}
    for name, candidate in (("fp32", inputs.fp32), ("int8", inputs.base)):
        with OrtCpuBackend(str(candidate.path), threads=inputs.threads) as backend:
            profile = backend.profile_node_times(inputs.feeds, runs=PROFILE_RUNS)
        times[name] = model_node_times(profile, inputs.model.proto.graph)
    # Rates per kind of node, not raw kernel times: the order then does not move with timing noise
    # (search/cost.py); only the relative rates of different kinds are measured quantities.
    costs = rate_costs(fallback_costs(times["fp32"], times["int8"]), inputs.model.proto.graph)
    inputs.state.save_record("search-costs", {"base_sha256": base_sha, "costs_ms": costs})
    return costs


def _gpu_costs(inputs: SearchInputs) -> dict[str, float]:
    """Node -> ms its layer adds in float, from the gpu engine's tactic timings of the base build
    at the bench batch (its 8-bit kernel against the float path, per linear layer). Other nodes
    cost 0: they run fake-quant in float either way. Off CUDA nothing is timed and every cost is
    0: the groups are then ordered by accuracy gain alone."""
    from trimtab.backends.gpu import GpuBackend

    with GpuBackend(str(inputs.base.path), cache=False) as backend:
        info = backend.build({name: value.shape for name, value in inputs.feeds.items()
                              if name in backend.prepare().input_names})
    costs = {}
    for name, entry in info.notes.get("layer_precisions", {}).items():
        times = dict(entry.get("ms", {}))
        low = min((ms for precision, ms in times.items() if precision in ("int8", "float8_e4m3fn")), default=None)
        high = min((ms for precision, ms in times.items() if precision not in ("int8", "float8_e4m3fn")), default=None)
        if low is not None and high is not None:
            costs[name] = max(high - low, 0.0)
    return costs


def _plan(inputs: SearchInputs, nodes: list[str]):
    from trimtab.build.plan import MatchKind, PrecisionPlan

    plan = PrecisionPlan.uniform(Precision.INT8)
    for name in nodes:
        plan = plan.with_rule(MatchKind.NAME, name, Precision.FP32)
    return plan


def _build(inputs: SearchInputs, nodes: list[str]):
    from trimtab._onnx_io import compact, is_large
    from trimtab.build import Smoothing, build_int8

    base = inputs.base.artifact
    smoothing = Smoothing(inputs.calibration.channels) if base.notes.get("smoothed") else None
    artifact = build_int8(inputs.model, inputs.calibration.ranges, base.flavour, plan=_plan(inputs, nodes),
                          method_name=base.calibration, skip_tensors=set(inputs.calibration.float_tensors),
                          smoothing=smoothing, unquantized=inputs.unquantized)
    if is_large(inputs.model.proto):  # give back the replaced weights' bytes (trimtab._onnx_io.compact)
        artifact.proto = compact(artifact.proto)
    return artifact


def _verify(inputs: SearchInputs, groups, k: int, costs: dict[str, float]):
    from trimtab.search.mixed import Step, prefix_cost, prefix_nodes

    began = time.monotonic()
    nodes = prefix_nodes(groups, k)
    artifact = _build(inputs, nodes)
    artifact.name = f"{inputs.base.artifact.name}-k{k:03d}"
    path = artifact.save(inputs.models_dir / "search" / f"{artifact.name}.onnx")
    result = inputs.evaluate(artifact)
    return Step(k=k, plan=artifact.name, fallback_nodes=nodes, metric_value=float(result.value),
                drop=float(result.drop_points), ci95=[float(x) for x in result.ci95], passes=inputs.passes(result),
                artifact=str(path.relative_to(inputs.root)), seconds=round(time.monotonic() - began, 3),
                est_cost_ms=round(prefix_cost(groups, k, costs), 4))


def _step_from_record(data: dict, inputs: SearchInputs):
    """A step a killed run verified; whether it passes is judged again under today's rule."""
    from trimtab.measure import EvalResult
    from trimtab.search.mixed import Step

    step = Step.from_dict(data)
    result = EvalResult(metric="", value=step.metric_value, baseline_value=0.0, drop_points=step.drop,
                        ci95=tuple(step.ci95), p_value=None, n_samples=0)
    step.passes = inputs.passes(result)
    return step


def _final_artifact(inputs: SearchInputs, best):
    """The best plan rebuilt (builds are deterministic) under its candidate name, mixed-..."""
    artifact = _build(inputs, best.fallback_nodes)
    base = inputs.base.artifact
    artifact.name = "mixed" + base.name[len("int8"):] if base.name.startswith("int8") else f"mixed-{base.name}"
    artifact.precision = "mixed"
    artifact.notes["fallback_nodes"] = list(best.fallback_nodes)
    artifact.notes["search_step"] = best.plan
    path = artifact.save(inputs.models_dir / f"{artifact.name}.onnx")
    return artifact, path
