"""Issue 3 acceptance: does returning the top-3 ranked groups to fp32 recover at least half of the
measured int8 metric drop? One run per example, ONNX Runtime CPU (OrtCpuBackend, ORT_ENABLE_ALL).

Per example:
  1. calibration = trimtab.calibrate.calibrate(model, example.calibration_data(), METHOD)
     int8 = build_int8(model, ranges, "ort-cpu", skip_tensors=calibration.float_tensors)
  2. metric on the evaluation set against fp32:
       effnet-lite0  top-1 agreement on agreement_data() (128 crops), entropy ranges
       minilm        mean cosine on validation_data() (200 sentences), entropy ranges (the
                     larger drop) and minmax ranges (small drop spread over every layer)
     (methods: effnet-lite0 entropy and mse, the one `tune` picks there; minilm entropy, minmax
     and mse)
  3. rank_sensitivity on the *calibration* data (its `--subset` worst samples; never the
     evaluation set, so the ranking is not fitted to the samples it is judged on), cheap proxy:
     KL of the logits for effnet-lite0 (`--classifier-proxy top1`: top-1 disagreement tie-broken
     by KL, on `--classifier-subset` samples), output SQNR for minilm, `--budget` seconds, once
     per `--modes` entry (oneshot: every group alone; greedy: ranks 2..`--depth` re-scored with
     the groups above in fp32, among the `--candidates` best of the first pass).
  4. plan = base plan with the top-3 groups in fp32; build, measure the metric again.
     recovered = int8 drop - top-3 drop; fraction = recovered / int8 drop (goal >= 0.5).
     For comparison, the same with the first 3 groups of the cheap prior alone (no ranking runs).
  5. `--oracle`: the ceiling of any ranking: 3 groups picked greedily by the metric on the
     evaluation set itself (every group alone, then the `--candidates` best re-scored with the
     chosen ones in fp32). Where even these recover less than half, no top-3 can.

    PYTHONPATH=src python bench/sensitivity_recovery.py [--budget 240] [--subset 16] [--modes oneshot,greedy]
        [--write docs/perf.md]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import write_marked_block

from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.build import build_int8
from trimtab.build.plan import MatchKind, PrecisionPlan
from trimtab.calibrate import calibrate
from trimtab.examples import get_example
from trimtab.explain.sensitivity import node_groups, rank_sensitivity
from trimtab.load import load_model
from trimtab.measure import collect_outputs, evaluate, sqnr_db
from trimtab.options import Precision

MARKER = "sensitivity"
TOP = 3
CURVE = (1, 3, 5, 10)  # top-k groups in fp32, for the recovery curve


@dataclass(frozen=True)
class Setup:
    name: str
    method: str
    metric: str
    proxy: str
    evaluation: str  # which example data set the metric is measured on


SETUPS = (
    Setup("effnet-lite0", "entropy", "agreement", "kl", "agreement_data (128 crops)"),
    Setup("effnet-lite0", "mse", "agreement", "kl", "agreement_data (128 crops)"),
    Setup("minilm", "entropy", "cosine", "sqnr", "validation_data (200 sentences)"),
    Setup("minilm", "minmax", "cosine", "sqnr", "validation_data (200 sentences)"),
    Setup("minilm", "mse", "cosine", "sqnr", "validation_data (200 sentences)"),
)


@dataclass
class Outcome:
    setup: Setup
    mode: str
    subset: int
    fp32: float
    int8: float
    int8_ci: tuple[float, float]
    top: float
    prior_top: float
    groups: int
    ranked: int
    top_nodes: list[str]
    prior_nodes: list[str]
    rank_seconds: float
    total_seconds: float
    base_proxy: float
    top_gains: list[float]
    proxy: str
    curve: dict[int, tuple[float, int]]  # k -> (metric with the top-k groups in fp32, nodes in fp32)
    sqnr: tuple[float, float]  # output SQNR dB on the evaluation set: all-int8, top-3 in fp32
    oracle: tuple[float, list[str]] | None = None  # best 3 groups picked on the evaluation set itself

    @property
    def drop(self) -> float:
        return 100.0 * (self.fp32 - self.int8)

    def recovered(self, value: float) -> float:
        return 100.0 * (value - self.int8)


def measure(proto, example, dataset, metric: str, reference):
    """The metric against fp32, with the output SQNR (dB) on the same samples in extras."""
    outputs = collect_outputs(OrtCpuBackend(proto), dataset)
    result = evaluate(example.task, metric, outputs, reference)
    result.extras["sqnr_db"] = sqnr_db(outputs.values, reference.values)
    return result


def fp32_plan(nodes: list[str]) -> PrecisionPlan:
    plan = PrecisionPlan.uniform(Precision.INT8)
    for name in nodes:
        plan = plan.with_rule(MatchKind.NAME, name, Precision.FP32)
    return plan


def run_setup(setup: Setup, args, folder: Path) -> list[Outcome]:
    start = time.perf_counter()
    model = load_model(f"example:{setup.name}")
    example = get_example(setup.name)
    calibration = calibrate(model, example.calibration_data(), setup.method)
    skip = set(calibration.float_tensors)

    def build(plan=None):
        return build_int8(model, calibration.ranges, "ort-cpu", method_name=setup.method, skip_tensors=skip,
                          plan=plan).proto

    evaluation = example.agreement_data() if setup.metric == "agreement" else example.validation_data()
    reference = collect_outputs(OrtCpuBackend(model.proto), evaluation)
    int8 = measure(build(), example, evaluation, setup.metric, reference)
    shared = time.perf_counter() - start
    outcomes = [rank_and_measure(setup, args, folder, model, example, calibration, build, evaluation, reference,
                                 int8, mode, shared) for mode in args.modes.split(",")]
    if args.oracle:
        groups = node_groups(model, build_int8(model, calibration.ranges, "ort-cpu", method_name=setup.method,
                                               skip_tensors=skip))
        oracle = oracle_top(groups, build, example, evaluation, setup.metric, reference, args.candidates)
        for outcome in outcomes:
            outcome.oracle = oracle
    return outcomes


def oracle_top(groups, build, example, evaluation, metric: str, reference, candidates: int):
    """The ceiling any ranking could reach: the 3 groups chosen greedily by the metric on the
    evaluation set itself (every group alone, then the `candidates` best re-scored with the chosen
    ones in fp32). Returns (metric with them in fp32, their nodes)."""
    def score(chosen):
        nodes = list(dict.fromkeys(name for group in chosen for name in group.nodes))
        return measure(build(fp32_plan(nodes)), example, evaluation, metric, reference).value, nodes

    first = sorted(((score([g])[0], i) for i, g in enumerate(groups)), reverse=True)
    chosen = [groups[first[0][1]]]
    pool = [groups[i] for _, i in first[1:candidates + 1]]
    value, nodes = score(chosen)
    while len(chosen) < TOP and pool:
        trials = [(score(chosen + [g])[0], j) for j, g in enumerate(pool)]
        best_value, best = max(trials)
        chosen.append(pool.pop(best))
        value, nodes = score(chosen)
    return value, nodes


def rank_and_measure(setup, args, folder, model, example, calibration, build, evaluation, reference, int8,
                     mode: str, shared: float) -> Outcome:
    start = time.perf_counter()
    classifier = setup.proxy == "kl"
    proxy = args.proxy or (args.classifier_proxy if classifier else setup.proxy)
    subset = args.classifier_subset if classifier and args.classifier_subset else args.subset
    ranking = rank_sensitivity(model, calibration.ranges, "ort-cpu", example.calibration_data(),
                               calibration=calibration, proxy=proxy, subset=subset,
                               time_budget_s=args.budget, mode=mode, depth=args.depth, candidates=args.candidates)
    ranking.save(folder / f"{setup.name}-{setup.method}-{mode}-layers.json")
    top_nodes = ranking.top_nodes(TOP)
    top = measure(build(ranking.plan(TOP)), example, evaluation, setup.metric, reference)
    curve = {}
    for k in CURVE:
        value = top.value if k == TOP else measure(build(ranking.plan(k)), example, evaluation,
                                                   setup.metric, reference).value
        curve[k] = (value, len(set(ranking.top_nodes(k))))
    by_prior = sorted([row.group for row in ranking.rows] + list(ranking.unranked), key=lambda g: g.prior)
    prior_nodes = list(dict.fromkeys(name for group in by_prior[:TOP] for name in group.nodes))
    prior_top = measure(build(fp32_plan(prior_nodes)), example, evaluation, setup.metric, reference)
    return Outcome(setup, mode, subset, int8.baseline_value, int8.value, int8.ci95, top.value, prior_top.value,
                   len(ranking.rows) + len(ranking.unranked), len(ranking.rows), top_nodes, prior_nodes,
                   ranking.seconds, shared + time.perf_counter() - start, ranking.base_proxy,
                   [row.gain for row in ranking.rows[:TOP]], ranking.proxy, curve,
                   (int8.extras["sqnr_db"], top.extras["sqnr_db"]))


def table(outcomes: list[Outcome]) -> list[str]:
    lines = [("| model (method) | mode | proxy (subset) | metric (eval set) | fp32 | int8 | int8 drop pts (95% CI) "
              "| top-3 fp32 | recovered pts | fraction recovered | prior-only top-3 (fraction) "
              "| output SQNR dB int8 -> top-3 | groups ranked | rank s | total s | oracle top-3 (fraction) |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        fraction = o.recovered(o.top) / o.drop if o.drop > 0 else float("nan")
        prior_fraction = o.recovered(o.prior_top) / o.drop if o.drop > 0 else float("nan")
        verdict = "no measurable drop" if o.drop <= 0 else "goal met" if fraction >= 0.5 else "goal missed"
        lines.append(
            f"| {o.setup.name} ({o.setup.method}) | {o.mode} | {o.proxy} ({o.subset}) "
            f"| {o.setup.metric} ({o.setup.evaluation}) | {o.fp32:.4f} "
            f"| {o.int8:.4f} | {o.drop:.2f} ({o.int8_ci[0]:.2f} to {o.int8_ci[1]:.2f}) | {o.top:.4f} "
            f"| {o.recovered(o.top):.2f} | {fraction:.2f} ({verdict}) | {o.prior_top:.4f} ({prior_fraction:.2f}) "
            f"| {o.sqnr[0]:.1f} -> {o.sqnr[1]:.1f} | {o.ranked}/{o.groups} | {o.rank_seconds:.0f} "
            f"| {o.total_seconds:.0f} | {_oracle_text(o)} |")
    return lines


def _oracle_text(o: Outcome) -> str:
    if o.oracle is None or o.drop <= 0:
        return "-"
    return f"{o.oracle[0]:.4f} ({o.recovered(o.oracle[0]) / o.drop:.2f})"


def details(outcomes: list[Outcome]) -> list[str]:
    lines = []
    for o in outcomes:
        gains = ", ".join(f"{gain:.3g}" for gain in o.top_gains)
        unit = {"kl": "nats of KL", "top1": "of the subset's top-1 disagreement"}.get(o.proxy, "dB")
        unit += ", cumulative after rank 1" if o.mode == "greedy" else ""
        curve = "; ".join(f"top-{k}: {value:.4f}, {o.recovered(value) / o.drop:.2f} of the drop ({nodes} nodes fp32)"
                          for k, (value, nodes) in o.curve.items()) if o.drop > 0 else "no drop"
        lines.append(f"- {o.setup.name} ({o.setup.method}, {o.mode}): proxy {o.proxy} (all-int8 {o.base_proxy:.4g}); top-3 "
                     f"groups (gains {gains} {unit}): {', '.join(f'`{n}`' for n in dict.fromkeys(o.top_nodes))}. "
                     f"Prior-only top-3: {', '.join(f'`{n}`' for n in dict.fromkeys(o.prior_nodes))}. "
                     f"Recovery by number of groups in fp32: {curve}.")
    return lines


def findings(outcomes: list[Outcome]) -> list[str]:
    """One generated line per setup: is the goal met, and how many groups would meet it."""
    lines = []
    for o in outcomes:
        if o.drop <= 0:
            lines.append(f"- {o.setup.name} ({o.setup.method}, {o.mode}): no measurable drop (fp32 {o.fp32:.4f}, int8 "
                         f"{o.int8:.4f}): nothing to recover.")
            continue
        fraction = o.recovered(o.top) / o.drop
        enough = next((k for k, (value, _) in o.curve.items() if o.recovered(value) / o.drop >= 0.5), None)
        share = o.top_gains[0] / o.base_proxy if o.proxy == "kl" and o.top_gains and o.base_proxy else None
        widest = max(o.curve)
        spread = (f" The best group removes {share:.0%} of the subset's KL yet "
                  f"{o.recovered(o.curve[1][0]) / o.drop:.2f} of the drop, and the "
                  f"top-{widest} groups ({o.curve[widest][1]} nodes) "
                  f"{o.recovered(o.curve[widest][0]) / o.drop:.2f}: the loss is spread over many layers."
                  if share is not None and enough is None else "")
        lines.append(
            f"- {o.setup.name} ({o.setup.method}, {o.mode}): goal {'met' if fraction >= 0.5 else 'missed'} "
            f"({fraction:.2f} of a {o.drop:.2f}-point drop); half the drop is recovered "
            + (f"from the top-{enough} groups on." if enough else f"by none of the top-{widest} groups or fewer.")
            + spread)
    return lines


def method_notes(args) -> list[str]:
    return [
        ("- Ranking: `trimtab.explain.rank_sensitivity` on the example's calibration data (the "
         f"{args.subset} samples with the worst all-int8 error), never on the evaluation set. A group is "
         "what must be fp32 for one quantized tensor to be float again: its quantized readers (one Q/DQ "
         "shared by Q/K/V is one group) and, for ort-cpu, its writer unless a Gemm/MatMul (the output Q "
         "closes the fused kernel), with a folded Relu/Clip; groups overlap, so top-3 can be 3-9 nodes. "
         "Each is rebuilt alone in fp32 with `build_int8(plan=...)` and run in OrtCpuBackend (optimisation "
         "on). Groups are tried in the order of a cheap prior (local quantization SQNR: the lowest of each "
         "input's whole-tensor and median-channel SQNR and of the weights') and those left when the budget "
         "ends are unranked."),
        "- `prior-only top-3`: the 3 groups the cheap prior alone would pick (no rebuilds), for comparison.",
        ("- `oracle top-3` (`--oracle`): the ceiling of any ranking, fitted to the evaluation set itself: every "
         "group alone in fp32 measured on the evaluation set, the best taken, then the `--candidates` next best "
         "re-measured with the chosen ones in fp32, twice. Where it recovers less than half of the drop, no "
         "choice of 3 groups found this way does, and the goal is out of reach for that model and method."),
        ("- `greedy` mode (`rank_sensitivity(mode=\"greedy\", depth=3, candidates=12)`): rank 1 is the first "
         "pass's best; for ranks 2 and 3 the 12 best groups of the first pass not yet chosen are rebuilt again "
         "with the chosen ones in fp32, and the best of them (by the proxy on the same calibration subset) "
         "takes the rank; its gains are cumulative. Ranks after 3 keep the first-pass order, so the top-5 and "
         "top-10 points of a greedy curve mix the two orders and need not rise. Cost: 2 x 12 extra rebuilds."),
        ("- Classifier proxy, checked by hand on EfficientNet-Lite0 (2026-11-26 03:40 UTC, same bench, "
         "`--classifier-subset 64`, two runs sharing the 2 cores, so their times are not comparable): KL on "
         "the 64 worst calibration crops: entropy 0.33 one-shot, 0.38 greedy; mse 0.08 one-shot, 0.46 greedy. "
         "Top-1 disagreement tie-broken by KL (`--classifier-proxy top1`) on 64 crops: entropy 0.24 one-shot, "
         "0.43 greedy; mse 0.38 one-shot, 0.38 greedy. Neither correlates better with the 128-crop agreement "
         "than KL on 16 crops, so the table keeps the project's default (KL, 16 worst crops). With mse ranges "
         "the drop is 13 crops, so one crop moves the fraction by 0.08: 0.46 and 0.54 are one crop apart and "
         "the EfficientNet results are within that noise."),
        ("- Drops are in points (100 x fraction) against fp32 on the same samples; the CI is the "
         "paired-bootstrap 95% interval of the int8 drop. One EfficientNet crop is 0.78 points of agreement, "
         "so its fractions move by about 0.05 per crop; the output SQNR column is the finer view."),
    ]


def environment() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()

    def field(key: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith(key)), "?")

    return [f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            (f"- CPU: {field('model name')} (family/model {field('cpu family')}/{field('model')}), "
             f"{os.cpu_count()} logical cores"),
            (f"- python {platform.python_version()}, onnxruntime {ort.__version__}, onnx {onnx.__version__}, "
             f"numpy {np.__version__}")]


def command(args) -> list[str]:
    words = [f"--budget {args.budget:g}", f"--subset {args.subset}", f"--modes {args.modes}",
             f"--depth {args.depth}", f"--candidates {args.candidates}", f"--classifier-proxy {args.classifier_proxy}"]
    if args.classifier_subset:
        words.append(f"--classifier-subset {args.classifier_subset}")
    if args.proxy:
        words.append(f"--proxy {args.proxy}")
    if args.oracle:
        words.append("--oracle")
    if args.models != "effnet-lite0,minilm":
        words.append(f"--models {args.models}")
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=240.0, help="rank_sensitivity time budget per model (s)")
    parser.add_argument("--subset", type=int, default=16, help="worst calibration samples scored per group")
    parser.add_argument("--proxy", choices=("kl", "sqnr", "top1"), help="override every setup's proxy")
    parser.add_argument("--classifier-proxy", choices=("kl", "top1"), default="kl",
                        help="proxy for the classifier (effnet-lite0)")
    parser.add_argument("--classifier-subset", type=int, help="subset for the classifier (default --subset)")
    parser.add_argument("--modes", default="oneshot,greedy", help="rank_sensitivity modes to compare")
    parser.add_argument("--depth", type=int, default=3, help="greedy: ranks re-scored conditionally")
    parser.add_argument("--candidates", type=int, default=12, help="greedy: first-pass groups re-scored per step")
    parser.add_argument("--models", default="effnet-lite0,minilm")
    parser.add_argument("--oracle", action="store_true",
                        help="also pick the best 3 groups greedily on the evaluation set itself (the ceiling)")
    parser.add_argument("--write", type=Path, help="write the table into this markdown file's marked block")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    wanted = args.models.split(",")  # example names, or NAME:METHOD for one setup
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = [outcome for setup in SETUPS if setup.name in wanted or f"{setup.name}:{setup.method}" in wanted
                    for outcome in run_setup(setup, args, Path(tmp))]
    lines = [
        "## Sensitivity ranking: does fp32 for the top-3 groups recover the int8 drop?", "",
        (f"Produced by `PYTHONPATH=src python bench/sensitivity_recovery.py {' '.join(command(args))} "
         "--write docs/perf.md` (this block only). Issue 3's goal: the top-3 "
         "ranked groups in fp32 recover at least half of the int8 drop."), "",
        *environment(), "", *table(outcomes), "", *details(outcomes), *findings(outcomes), "", *method_notes(args),
    ]
    print("\n".join(lines))
    if args.write:
        write_marked_block(args.write, MARKER, lines)


if __name__ == "__main__":
    main()
