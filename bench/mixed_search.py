"""Issue 4 acceptance: the mixed-precision search under a budget full int8 misses, against NNCF,
timed side by side in one process on ONNX Runtime CPU.

Per setup:
  1. `trimtab.tune(example, TuneConfig(budget=..., methods=..., smoothing=...))` into a fresh run
     folder: calibrate, build, evaluate, search (at most --max-evals full evaluations), bench.
     Recorded: the best full-int8 candidate the search starts from, the steps it verified, its
     evaluations and seconds, and the mixed plan it returns.
  2. NNCF (`nncf.quantize` on the same calibration samples; model_type TRANSFORMER for MiniLM, the
     default for the CNN) evaluated on the same validation data with trimtab's own evaluate().
  3. One interleaved timing (`bench_interleaved`, batch 8, OrtCpuBackend, ORT default spinning
     with a settle pause) of fp32, the search's start, the mixed plan and NNCF: speed-ups are the
     median over rounds of fp32 time / candidate time in the same round.

Setups:
  minilm budget 0.5 points of cosine (mean cosine >= 0.995), smoothing off: full int8 misses
  minilm budget 0.2 points (cosine >= 0.998), smoothing on: the smoothed int8 misses too
  effnet-lite0 top-1 agreement with fp32 on the 128 agreement crops, budget --effnet-budget points

    PYTHONPATH=src python bench/mixed_search.py [--rounds 20] [--write docs/perf.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import package_version, write_marked_block

import trimtab
from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.examples import get_example
from trimtab.load import load_model
from trimtab.measure import collect_outputs, evaluate
from trimtab.measure.bench import bench_interleaved
from trimtab.pipeline import _bench_feeds

MARKER = "mixed_search"
BATCH = 8
THREADS = 2


@dataclass(frozen=True)
class Setup:
    example: str
    budget: float
    smoothing: bool
    methods: tuple[str, ...]
    validation: str  # "validation" or "agreement"
    metric: str
    nncf_type: str | None  # nncf.ModelType member name, or None for the default


def setups(effnet_budget: float) -> list[Setup]:
    return [
        Setup("minilm", 0.5, False, ("minmax", "mse"), "validation", "cosine", "TRANSFORMER"),
        Setup("minilm", 0.2, True, ("minmax", "mse"), "validation", "cosine", "TRANSFORMER"),
        Setup("effnet-lite0", effnet_budget, False, ("mse", "percentile"), "agreement", "agreement", None),
    ]


def run_setup(setup: Setup, args, folder: Path) -> dict:
    example = get_example(setup.example)
    validation = example.validation_data() if setup.validation == "validation" else example.agreement_data()
    config = trimtab.TuneConfig(budget=setup.budget, metric=setup.metric, methods=setup.methods,
                                smoothing=setup.smoothing, include_fp16=False, batch_size=BATCH, threads=THREADS,
                                bench_seconds=args.tune_bench_seconds, measure_memory=False, explain=False,
                                max_evals=args.max_evals)
    began = time.perf_counter()
    summary = trimtab.tune(f"example:{setup.example}", example.calibration_data(), validation, config,
                           out=folder / f"{setup.example}-{setup.budget:g}")
    tune_seconds = time.perf_counter() - began
    run = folder / f"{setup.example}-{setup.budget:g}"
    model = load_model(f"example:{setup.example}")
    peer = nncf_candidate(model, example, setup, folder)
    rows = {"fp32": run / "models" / "fp32.onnx"}
    search = summary.search
    start = search.get("start")
    if start:
        rows[start] = run / summary.candidate(start).artifact
    if search.get("best"):
        rows[search["best"]] = run / summary.candidate(search["best"]).artifact
    accuracy = {c.name: (c.metric_value, c.metric_drop, c.metric_ci95) for c in summary.candidates}
    if peer["path"]:
        rows[peer["name"]] = Path(peer["path"])
        accuracy[peer["name"]] = peer_accuracy(peer["path"], run / "models" / "fp32.onnx", validation, setup, summary)
    speed = time_side_by_side(rows, validation, args.rounds)
    return {"setup": setup, "summary": summary, "tune_seconds": tune_seconds, "peer": peer, "rows": rows,
            "accuracy": accuracy, "speed": speed}


def nncf_candidate(model, example, setup: Setup, folder: Path) -> dict:
    name = f"NNCF {setup.nncf_type.lower() if setup.nncf_type else 'default'}"
    began = time.perf_counter()
    try:
        import nncf

        samples = [sample.inputs for sample in example.calibration_data()]
        dataset = nncf.Dataset(samples, lambda inputs: {k: v[None] for k, v in inputs.items()})
        options = {"model_type": getattr(nncf.ModelType, setup.nncf_type)} if setup.nncf_type else {}
        quantized = nncf.quantize(model.proto, dataset, subset_size=len(samples), **options)
    except Exception as exc:  # noqa: BLE001 - a peer's failure is recorded, the rest goes on
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
        return {"name": name, "path": None, "seconds": time.perf_counter() - began, "note": f"failed: {reason[:200]}"}
    path = folder / f"nncf-{setup.example}-{setup.budget:g}.onnx"
    onnx.save(quantized, str(path))
    return {"name": name, "path": str(path), "seconds": time.perf_counter() - began, "note": ""}


def peer_accuracy(path: str, fp32_path: Path, validation, setup: Setup, summary) -> tuple:
    with OrtCpuBackend(str(fp32_path), threads=THREADS) as backend:
        reference = collect_outputs(backend, validation, batch_size=16)
    with OrtCpuBackend(path, threads=THREADS) as backend:
        outputs = collect_outputs(backend, validation, batch_size=16)
    result = evaluate(summary.task, setup.metric, outputs, reference, labels=reference.labels)
    return result.value, result.drop_points, list(result.ci95)


def time_side_by_side(rows: dict[str, Path], validation, rounds: int) -> dict:
    feeds = _bench_feeds(validation, BATCH)
    backends = {name: OrtCpuBackend(str(path), threads=THREADS) for name, path in rows.items()}
    try:
        for backend in backends.values():
            backend.prepare()
        return bench_interleaved(backends, feeds, baseline="fp32", rounds=rounds)
    finally:
        for backend in backends.values():
            backend.close()


def report(results: list[dict], args) -> list[str]:
    lines = [
        "## Mixed-precision search vs NNCF (issue 4)",
        "",
        f"Produced by `PYTHONPATH=src python bench/mixed_search.py --rounds {args.rounds} --max-evals {args.max_evals} "
        f"--effnet-budget {args.effnet_budget:g} --write docs/perf.md` (this block only).",
        "",
        *environment(),
        "",
        "| model, budget | candidate | metric | drop pts (95% CI) | within budget | speed-up vs fp32 (p10-p90) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        setup = result["setup"]
        label = f"{setup.example}, {setup.budget:g} pt{'' if setup.smoothing else ', smoothing off'}"
        for name in result["rows"]:
            value, drop, ci = result["accuracy"][name]
            bench = result["speed"][name]
            spread = f"{1 / bench.ratio_p90:.2f}-{1 / bench.ratio_p10:.2f}"
            ok = "yes" if drop <= setup.budget + 1e-9 else "no"
            lines.append(f"| {label} | {name} | {setup.metric} {value:.4f} | {drop:+.2f} ({ci[0]:+.2f} to {ci[1]:+.2f}) "
                         f"| {ok} | {bench.speedup:.2f}x ({spread}) |")
    lines.append("")
    for result in results:
        lines.append(f"- {describe(result)}")
    lines += [
        "",
        "- Each setup is one `trimtab.tune` run (calibration, candidates, search, decision) followed by one interleaved "
        "timing of fp32, the search's starting point, its mixed plan and NNCF in the same process "
        f"(batch {BATCH}, {THREADS} threads, {args.rounds} rounds).",
        "- Evaluations: full passes over the validation set that the search ran (at most `--max-evals`); the uniform "
        "candidates' own evaluations are not counted. NNCF's accuracy-control loop needed 101 (MiniLM) and 204 "
        "validation calls in FACTS.md's runs; NNCF here is its plain `quantize` (no accuracy control).",
    ]
    return lines


def describe(result: dict) -> str:
    setup, summary, search = result["setup"], result["summary"], result["summary"].search
    steps = ", ".join(f"k={s['k']} {s['drop']:+.2f}{' ok' if s['passes'] else ''}" for s in search.get("steps", []))
    text = (f"{setup.example} ({setup.budget:g} pt): search {search.get('status')} from {search.get('start')} in "
            f"{search.get('evaluations', 0)} evaluation(s), {search.get('seconds', 0):.0f} s (ranking "
            f"{search.get('ranking_seconds', 0):.0f} s); steps (groups in fp32, drop): {steps or 'none'}")
    best = search.get("best")
    if best:
        text += f"; plan {best}: {len(summary.candidate(best).fallback_nodes)} node(s) in fp32"
    text += f"; tune chose {summary.chosen}; whole tune {result['tune_seconds']:.0f} s"
    if result["peer"]["note"]:
        text += f"; {result['peer']['name']} {result['peer']['note']}"
    return text + "."


def environment() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = ", ".join(f"{name} {package_version(name)}" for name in ("onnxruntime", "onnx", "nncf", "numpy"))
    return [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- CPU: {cpu}, {len(__import__('os').sched_getaffinity(0))} logical cores",
            f"- python {platform.python_version()}, {versions}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-evals", type=int, default=8)
    parser.add_argument("--effnet-budget", type=float, default=2.0)
    parser.add_argument("--tune-bench-seconds", type=float, default=5.0)
    parser.add_argument("--only", help="comma-separated example names")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    chosen = setups(args.effnet_budget)
    if args.only:
        chosen = [s for s in chosen if s.example in args.only.split(",")]
    with tempfile.TemporaryDirectory(prefix="trimtab-mixed-") as tmp:
        results = [run_setup(setup, args, Path(tmp)) for setup in chosen]
        lines = report(results, args)
    print("\n".join(lines))
    if args.write:
        write_marked_block(args.write, MARKER, lines)


if __name__ == "__main__":
    main()
