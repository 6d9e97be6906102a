"""tune: the whole pipeline, from a model and two data sets to a decided precision and a run folder.

    load -> data -> calibrate -> build -> run -> measure -> decide -> report

Each stage writes its outputs into the run folder atomically as soon as they exist, so a
crash loses at most the stage in progress.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trimtab.options import CalibrationMethod, DecisionRule, Int8Flavour, Objective, Precision, Target, Task

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage description, done, total)


@dataclass(frozen=True)
class TuneConfig:
    """Options of `tune`; the CLI flags of the same names map onto these fields."""

    task: Task | None = None  # None: the example's task, else classify
    metric: str | None = None  # None: the task's default (top1 with labels, agreement without, cosine)
    budget: float = 1.0  # accepted metric drop, in points (100 x fraction), absolute
    target: Target = Target.ORT_CPU
    methods: tuple[CalibrationMethod, ...] = tuple(CalibrationMethod)
    include_fp16: bool = True
    include_fp8: bool | None = None  # gpu target: an fp8 candidate (None: where the GPU has fp8 tensor cores)
    smoothing: bool = True  # offer a SmoothQuant-style int8 candidate where MatMul inputs have outliers
    batch_size: int = 8  # benchmark batch
    eval_batch_size: int = 16
    threads: int | None = None  # ONNX Runtime intra-op threads (None = all cores)
    bench_seconds: float = 20.0  # total interleaved timing budget across candidates
    calib_limit: int | None = None
    val_limit: int | None = None
    measure_memory: bool = True
    explain: bool = True  # the cheap explain pass: lint, calibration diagnostics, coverage, layer diff
    decision: DecisionRule = DecisionRule.POINT
    objective: Objective = Objective.THROUGHPUT
    latency_slo_ms: float | None = None  # p99 latency per batch every chosen candidate must meet
    favour: tuple[str, float] | None = None  # (precision, margin): see search.decide.decide
    search: bool = True  # the mixed-precision search when the best full-int8 candidate misses
    max_evals: int = 8  # full evaluations the search may spend
    time_limit_s: float | None = None  # the whole run; stages before the search always finish
    scenario: str | None = None  # the preset that filled these fields (trimtab.scenarios)
    require_calibration: bool = True  # False: without calibration data, build fp32/fp16 only
    focus_ops: tuple[str, ...] = ()  # op types the sensitivity ranking tries first

    def __post_init__(self) -> None:
        if not self.budget >= 0:
            raise ValueError(f"budget must be >= 0 points, got {self.budget}")
        if self.max_evals < 0:
            raise ValueError(f"max_evals must be >= 0, got {self.max_evals}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0 seconds, got {self.time_limit_s}")
        object.__setattr__(self, "decision", DecisionRule(self.decision))
        object.__setattr__(self, "objective", Objective(self.objective))
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if not self.methods:
            raise ValueError("at least one calibration method is needed")
        object.__setattr__(self, "target", Target(self.target))
        object.__setattr__(self, "methods", tuple(CalibrationMethod(m) for m in self.methods))
        if self.task is not None:
            object.__setattr__(self, "task", Task(self.task))
        if self.include_fp8 and self.target != Target.GPU:
            raise ValueError("fp8 candidates need target gpu (ONNX Runtime CPU only emulates fp8 Q/DQ: never faster)")

    @property
    def fp8(self) -> bool:
        """Whether an fp8 candidate is built: as asked, else on the gpu target where the GPU has fp8
        tensor cores (compute capability 8.9 and later: Ada, Hopper)."""
        if self.include_fp8 is not None:
            return self.include_fp8
        if self.target != Target.GPU:
            return False
        try:
            import torch
        except ImportError:
            return False
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)

    @property
    def flavour(self) -> Int8Flavour:
        return Int8Flavour.ORT_CPU if self.target == Target.ORT_CPU else Int8Flavour.TENSORRT

    @property
    def unquantized(self) -> Precision:
        """What int8 candidates leave unquantized runs in: fp16 on a GPU (fast there; TensorRT's
        int8 + fp16 fallback), fp32 on the CPU (where fp16 is slower than fp32)."""
        return Precision.FP16 if self.target == Target.GPU else Precision.FP32


@dataclass
class RunFolder:
    """The layout of DESIGN.md's run folder."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        for sub in ("models", "calibration"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for leftover in self.root.rglob(".*.tmp"):  # an atomic write a kill interrupted
            leftover.unlink(missing_ok=True)

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"


@dataclass
class Measured:
    """One candidate after build + evaluate (+ bench)."""

    artifact: Any  # trimtab.build.Artifact
    path: Path
    evaluation: Any = None  # trimtab.measure.EvalResult
    bench: Any = None  # trimtab.measure.BenchResult
    peak_mem_bytes: int | None = None
    extras: dict = field(default_factory=dict)
    sha256: str = ""  # of the artifact's bytes: the key of its evaluation in the run state


def device_description() -> str:
    """A short CPU description for summaries, from /proc/cpuinfo where present."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _target_device(target: Target) -> str:
    if target == Target.GPU:
        from trimtab.backends.gpu.backend import device_description as gpu_device

        return gpu_device(device_description())
    return device_description()


class StageTimer:
    """Records how long each stage took, for summary.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()
                log.info("stage %s ...", name)

            def __exit__(self, *exc):
                timer.seconds[name] = round(time.perf_counter() - self.start, 3)
                log.info("stage %s done in %.1f s", name, timer.seconds[name])

        return _Span()


# ---------------------------------------------------------------------------------------------
# the pipeline


def tune(
    model_source: Any,
    calib: Any = None,
    val: Any = None,
    config: TuneConfig | None = None,
    *,
    out: str | Path = "trimtab-run",
    progress: Progress | None = None,
    command: str = "",
):
    """Run the whole pipeline and write the run folder; return the `Summary`.

    `model_source`: path / ModelProto / torch module / `example:NAME`. `calib` and `val` are
    `Dataset`s (or None for an example, whose own data is used).
    """
    from trimtab.load import load_model

    config = config or TuneConfig()
    started = time.monotonic()
    deadline = started + config.time_limit_s if config.time_limit_s else None
    folder = RunFolder(Path(out))
    handler = _attach_log(folder.log)
    timer = StageTimer()
    try:
        with timer("load"):
            model = load_model(model_source)
            setup = _resolve_setup(model_source, calib, val, config)
            state = _run_state(model, setup, config, folder)
        with timer("calibrate"):
            calibrations = _calibrate_all(model, setup["calib"], config, folder, progress)
        with timer("build"):
            candidates = _build_all(model, calibrations, config, folder)
        with timer("evaluate"):
            evaluator = _Evaluator(setup, config, state, candidates[0], progress)
            for candidate in candidates:
                candidate.evaluation = evaluator(candidate.artifact)
        with timer("search"):
            search = _search(model, calibrations, candidates, evaluator, setup, config, folder, state, deadline)
        with timer("bench"):
            summary_notes = []
            hurry = deadline is not None and time.monotonic() + config.bench_seconds > deadline
            if _bench_all(candidates, setup["val"], config, progress, _bench_seconds(config, deadline), hurry, state):
                summary_notes.append("Resumed: the candidates' timings are those the interrupted run measured "
                                     "(state/bench.json), so its decision stands.")
            elif hurry:
                summary_notes.append("The time limit was near: candidates were timed in 3 rounds and peak memory "
                                     "was not measured.")
        summary = _summarise(model, candidates, setup, config, folder, timer, command)
        summary.notes.extend(summary_notes)
        summary.search = search
        # Steps a killed search verified are reused without asking the evaluator: add them.
        summary.search["evaluations_total"] = {"run": evaluator.run,
                                               "reused": evaluator.reused + search.get("reused", 0)}
        reused = summary.search["evaluations_total"]["reused"]
        if reused:
            summary.notes.append(f"Resumed from the run folder: {reused} evaluation(s) reused, {evaluator.run} run now.")
        if config.explain and calibrations and deadline is not None and time.monotonic() > deadline:
            summary.notes.append("The time limit was reached: the explain pass (lint, diagnostics, coverage, "
                                 "layer diff) was skipped; rerun without --time-limit for it.")
        elif config.explain and calibrations:
            with timer("explain"):
                summary.notes.extend(_explain(model, calibrations, candidates, setup, summary, folder,
                                              ranked=bool(search.get("steps"))))
            summary.timings_s = dict(timer.seconds)
        _write_outputs(summary, candidates, folder)
        return summary
    finally:
        logging.getLogger("trimtab").removeHandler(handler)
        handler.close()


def _attach_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("trimtab")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def _resolve_setup(model_source: Any, calib: Any, val: Any, config: TuneConfig) -> dict:
    """Data, task and metric: an example brings its own; explicit arguments win."""
    from trimtab.errors import InvalidDataError

    example = None
    if isinstance(model_source, str) and model_source.startswith("example:"):
        from trimtab.examples import get_example

        example = get_example(model_source.split(":", 1)[1])
    calib = calib if calib is not None else (example.calibration_data() if example else None)
    val = val if val is not None else (example.validation_data() if example else None)
    if (calib is None and config.require_calibration) or val is None:
        missing = "--calib" if calib is None else "--val"
        raise InvalidDataError(
            f"tuning needs calibration and validation data; {missing} was not given",
            hint="pass --calib DIR (unlabelled samples) and --val DIR (labelled if possible)",
        )
    if config.calib_limit and calib is not None:
        calib = calib.take(config.calib_limit)
    if config.val_limit:
        val = val.take(config.val_limit)
    task = config.task or (Task(example.task) if example else Task.CLASSIFY)
    metric = config.metric or (example.metric if example and not config.task else _default_metric(task, val))
    extra = example.extra_metrics() if example and hasattr(example, "extra_metrics") else {}
    return {"calib": calib, "val": val, "task": task, "metric": metric, "extra_metrics": extra or {}}


def _default_metric(task: Task, val) -> str:
    if task == Task.CLASSIFY:
        return "top1" if getattr(val, "labelled", False) else "agreement"
    return "cosine"


def _calibrate_all(model, calib, config: TuneConfig, folder: RunFolder, progress: Progress | None) -> dict:
    """One histogram pass over the calibration data (cached), then every method's ranges from it."""
    from trimtab._io import atomic_write_json
    from trimtab._paths import cache_root
    from trimtab.calibrate import calibrate, write_trt_cache

    results = {}
    if calib is None:  # a scenario that needs none (edge): fp32 and fp16 only
        log.info("no calibration data: int8 candidates are not built")
        return results
    for method in config.methods:
        report = (lambda done, total: progress("calibrate", done, total)) if progress else None
        results[method] = calibrate(
            model, calib, method, cache_dir=cache_root() / "calibration", batch_size=config.batch_size, progress=report,
            target="gpu" if config.target == Target.GPU else "ort-cpu",  # activations where the candidates run
        )
        ranges = {name: {"amax": r.amax, "min": r.min, "max": r.max} for name, r in results[method].ranges.items()}
        atomic_write_json(folder.calibration / f"ranges-{method.value}.json", ranges)
    # TensorRT's own default calibrator is entropy (EntropyCalibration2): export that one.
    trt_method = CalibrationMethod.ENTROPY if CalibrationMethod.ENTROPY in results else config.methods[0]
    write_trt_cache(results[trt_method].ranges, folder.calibration / "trt.cache")
    return results


def _build_all(model, calibrations: dict, config: TuneConfig, folder: RunFolder) -> list[Measured]:
    from trimtab._onnx_io import compact, is_large
    from trimtab.build import build_fp16, build_fp32, build_int8

    # Over 2 GB each build is compacted before the next one starts (trimtab._onnx_io.compact).
    done = compact if is_large(model.proto) else (lambda proto: proto)
    artifacts = [build_fp32(model)]
    if config.include_fp16:
        artifacts.append(build_fp16(model))
        artifacts[-1].proto = done(artifacts[-1].proto)
    for method, calibration in calibrations.items():
        skip = set(calibration.float_tensors)
        artifacts.append(build_int8(model, calibration.ranges, config.flavour, method_name=method.value, skip_tensors=skip,
                                    unquantized=config.unquantized))
        artifacts[-1].proto = done(artifacts[-1].proto)
    if config.fp8 and calibrations:  # one fp8 candidate: amax ranges (fp8 has the range to spare), else the first
        from trimtab.build import build_fp8

        method = CalibrationMethod.MINMAX if CalibrationMethod.MINMAX in calibrations else next(iter(calibrations))
        calibration = calibrations[method]
        artifacts.append(build_fp8(model, calibration.ranges, method_name=method.value,
                                   skip_tensors=set(calibration.float_tensors), unquantized=config.unquantized))
        artifacts[-1].proto = done(artifacts[-1].proto)
    smoothed = _smoothed_candidate(model, calibrations, config)
    if smoothed is not None:
        smoothed.proto = done(smoothed.proto)
        artifacts.append(smoothed)
    measured = []
    for artifact in artifacts:
        path = artifact.save(folder.models / f"{artifact.name}.onnx")
        measured.append(Measured(artifact=artifact, path=path))
    return measured


# Smoothing pays on models whose MatMul inputs carry outlier channels (transformers): it is tried
# once, on the first of these ranges that was calibrated (minmax and mse keep the outlier channels'
# signal; entropy and percentile clip it: cosine 0.94/0.96 on MiniLM against 0.99).
_SMOOTHING_METHODS = (CalibrationMethod.MINMAX, CalibrationMethod.MSE)
_MIN_SMOOTHED_INPUTS = 2  # a CNN's single classifier Gemm is not worth a candidate


def _smoothed_candidate(model, calibrations: dict, config: TuneConfig):
    """An int8 candidate with SmoothQuant-style outlier migration, or None where it does not apply."""
    from trimtab.build import Smoothing, build_int8

    method = next((m for m in _SMOOTHING_METHODS if m in calibrations), None)
    if not config.smoothing or method is None or not calibrations[method].channels:
        return None
    calibration = calibrations[method]
    artifact = build_int8(
        model,
        calibration.ranges,
        config.flavour,
        method_name=method.value,
        skip_tensors=set(calibration.float_tensors),
        smoothing=Smoothing(calibration.channels),
        unquantized=config.unquantized,
    )
    if len(artifact.notes.get("smoothed", {})) < _MIN_SMOOTHED_INPUTS:
        return None
    return artifact


def _run_state(model, setup: dict, config: TuneConfig, folder: RunFolder):
    """The run folder's record of finished work; it is reused only for the same model, data,
    task, metric and target."""
    from trimtab.resume import RunState

    calib = setup["calib"]
    identity = {"model_sha256": model.sha256, "validation": setup["val"].fingerprint(),
                "calibration": calib.fingerprint() if calib is not None else None, "task": setup["task"].value,
                "metric": setup["metric"], "target": config.target.value, "eval_batch_size": config.eval_batch_size}
    return RunState(folder.root, identity)


class _Evaluator:
    """Evaluates artifacts on the validation set against the fp32 reference outputs, through the
    run state: an artifact evaluated before (same bytes) is not evaluated again."""

    def __init__(self, setup: dict, config: TuneConfig, state, fp32: Measured, progress: Progress | None) -> None:
        self.setup, self.config, self.state, self.progress = setup, config, state, progress
        self.fp32 = fp32
        self._reference = None
        self.run = self.reused = 0  # evaluations run now / taken from an earlier run's state
        self._this_run: set[str] = set()

    def __call__(self, artifact, count: bool = True):
        """`count=False`: a lookup of an artifact evaluated before under another name (the
        search's final plan), not counted as reused."""
        from trimtab.measure import evaluate

        sha = artifact.sha256()
        cached = self.state.evaluation(sha)
        if cached is not None:
            self.reused += count and sha not in self._this_run
            self._this_run.add(sha)
            return cached
        reference = self.reference()
        outputs = reference if artifact is self.fp32.artifact else self._outputs(artifact)
        result = evaluate(self.setup["task"], self.setup["metric"], outputs, reference, labels=reference.labels,
                          extra_metrics=self.setup["extra_metrics"])
        self.state.save_evaluation(sha, result)
        self._this_run.add(sha)
        self.run += 1
        return result

    def reference(self):
        """The fp32 outputs on the validation set (saved in the run state)."""
        if self._reference is None:
            sha = self.fp32.artifact.sha256()
            self._reference = self.state.reference_outputs(sha)
            if self._reference is None:
                self._reference = self._outputs(self.fp32.artifact)
                self.state.save_reference_outputs(sha, self._reference)
        return self._reference

    def _outputs(self, artifact):
        from trimtab.backends import get_backend
        from trimtab.measure import collect_outputs

        name = artifact.name
        report = (lambda done, total: self.progress(f"evaluate {name}", done, total)) if self.progress else None
        # gpu: one engine per padded batch shape; keep those plans out of the on-disk engine cache
        options = {"cache": False} if self.config.target == Target.GPU else {}
        with get_backend(self.config.target, artifact.proto, threads=self.config.threads, **options) as backend:
            return collect_outputs(backend, self.setup["val"], batch_size=self.config.eval_batch_size, progress=report)


def _search(model, calibrations: dict, candidates: list[Measured], evaluator: _Evaluator, setup: dict,
            config: TuneConfig, folder: RunFolder, state, deadline: float | None) -> dict:
    """The mixed-precision search from the best full-int8 candidate, when it misses the budget.
    Its best plan joins `candidates` (timed with the others). Returns summary.json's `search`."""
    from trimtab.search import passes
    from trimtab.search.run import SearchInputs, run_search

    int8 = [c for c in candidates if c.artifact.precision == "int8"]
    if not int8:
        return {"status": "skipped", "why": "no int8 candidate"}
    base = min(int8, key=lambda c: c.evaluation.drop_points)
    judge = lambda result: passes(_score(result), config.budget, config.decision)  # noqa: E731
    if judge(base.evaluation):
        return {"status": "skipped", "start": base.artifact.name,
                "why": f"{base.artifact.name} meets the budget under the {config.decision.value} rule"}
    if not config.search or config.max_evals == 0:
        return {"status": "skipped", "start": base.artifact.name, "why": "the search is turned off"}
    began = time.monotonic()
    inputs = SearchInputs(
        model=model, base=base, fp32=candidates[0], calibration=calibrations[CalibrationMethod(base.artifact.calibration)],
        validation=setup["val"], feeds=_bench_feeds(setup["val"], config.batch_size), evaluate=evaluator,
        passes=judge, models_dir=folder.models, root=folder.root, state=state,
        base_sha=base.artifact.sha256(), budget=config.budget, threads=config.threads,
        focus_ops=tuple(config.focus_ops), target=config.target.value, unquantized=config.unquantized)
    run = run_search(inputs, max_evals=config.max_evals, deadline=deadline)
    if run.best_artifact is not None:
        candidates.append(Measured(artifact=run.best_artifact, path=run.best_path, evaluation=run.best_evaluation))
    return run.to_dict(base.artifact.name, time.monotonic() - began)


def _score(result, name: str = "", precision: str = "", bench=None):
    from trimtab.search import CandidateScore

    return CandidateScore(
        name=name, precision=precision, drop_points=result.drop_points,
        throughput_per_s=bench.throughput_per_s if bench else 0.0, ci95=tuple(result.ci95),
        speedup=bench.speedup if bench else None, latency_ms=dict(bench.latency_ms) if bench else None,
        n_samples=result.n_samples)


def _bench_seconds(config: TuneConfig, deadline: float | None) -> float | None:
    """The timing budget under a time limit: what the config asks, shortened to the time left
    (2 s at least: fewer rounds than that say little); None without a limit."""
    if deadline is None:
        return None
    return min(config.bench_seconds, max(deadline - time.monotonic(), 2.0))


def _bench_all(candidates: list[Measured], val, config: TuneConfig, progress: Progress | None,
               seconds: float | None = None, hurry: bool = False, state=None) -> bool:
    """Time every candidate interleaved on one batch of real validation data. `hurry` (past a time
    limit): the fewest rounds that still give a spread (3), and no peak-memory subprocesses.

    The timings (and peak memory, once measured) are kept in the run state, keyed by the
    candidates' sha256: a run killed after its bench resumes with the same timings, hence the same
    decision, instead of a new speed race between near-equal candidates. Returns True when they
    were reused."""
    from trimtab.measure import BenchResult

    key = {"candidates": [[c.artifact.name, c.sha256 or c.artifact.sha256()] for c in candidates],
           "batch_size": config.batch_size, "threads": config.threads, "hurry": hurry}
    record = state.record("bench") if state is not None else None
    reused = bool(record) and record.get("key") == key
    if reused:
        try:
            results = {name: BenchResult.from_dict(data) for name, data in record["results"].items()}
            memory = {str(k): int(v) for k, v in record.get("peak_mem_bytes", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            reused = False
    if not reused:
        results, memory = _time_candidates(candidates, val, config, progress, seconds, hurry), {}
        if state is not None:
            state.save_record("bench", {"key": key, "results": {n: r.to_dict() for n, r in results.items()}})
    feeds = _bench_feeds(val, config.batch_size)
    for candidate in candidates:
        candidate.bench = results[candidate.artifact.name]
        if config.measure_memory and not hurry and candidate.artifact.name not in memory:
            peak = _peak_memory(candidate, feeds, config)
            if peak is not None:
                memory[candidate.artifact.name] = peak
        candidate.peak_mem_bytes = memory.get(candidate.artifact.name)
    if state is not None and memory:
        state.save_record("bench", {"key": key, "results": {n: r.to_dict() for n, r in results.items()},
                                    "peak_mem_bytes": memory})
    return reused


def _peak_memory(candidate: Measured, feeds: dict, config: TuneConfig) -> int | None:
    """ort-cpu: the resident memory an ONNX Runtime process gains running the candidate (a fresh
    process); gpu: the GPU memory its engine allocates (None on the CPU fallback); else None."""
    if config.target == Target.ORT_CPU:
        from trimtab.measure import peak_memory_bytes

        return peak_memory_bytes(candidate.path, feeds, threads=config.threads)
    if config.target == Target.GPU:
        from trimtab.backends.gpu.backend import device_peak_bytes

        return device_peak_bytes(str(candidate.path), feeds)
    return None


def _time_candidates(candidates: list[Measured], val, config: TuneConfig, progress: Progress | None,
                     seconds: float | None, hurry: bool) -> dict:
    from trimtab.backends import get_backend
    from trimtab.measure import bench_interleaved

    feeds = _bench_feeds(val, config.batch_size)
    backends = {c.artifact.name: get_backend(config.target, str(c.path), threads=config.threads) for c in candidates}
    try:
        for backend in backends.values():
            backend.prepare()
        report = (lambda done, total: progress("bench", done, total)) if progress else None
        results = bench_interleaved(
            backends, feeds, baseline=candidates[0].artifact.name,
            min_seconds=min(config.bench_seconds, seconds) if seconds is not None else config.bench_seconds,
            progress=report,
            **({"rounds": 3, "warmup": 1} if hurry else {}), max_seconds=seconds,
        )
        for name, backend in backends.items():  # what the engine chose per layer while it was timed
            results[name].layer_precisions = backend.layer_precisions()
        return results
    finally:
        for backend in backends.values():
            backend.close()


def _bench_feeds(val, batch_size: int) -> dict:
    """A batch of exactly `batch_size` real samples (repeating the data if it is smaller)."""
    import numpy as np

    samples = []
    while len(samples) < batch_size:
        before = len(samples)
        for sample in val:
            samples.append(sample)
            if len(samples) == batch_size:
                break
        if len(samples) == before:
            break
    from trimtab.data import Dataset

    batch = next(Dataset(samples, name="bench").batches(batch_size))
    return {name: np.ascontiguousarray(array) for name, array in batch.inputs.items()}


def _explain(model, calibrations: dict, candidates: list[Measured], setup: dict, summary, folder: RunFolder,
             ranked: bool = False):
    """Run the cheap explain pass on the int8 candidate that matters: the chosen one, or else the
    most accurate int8 (to show where its accuracy went). The sensitivity ranking runs here only
    when int8 misses and the search did not rank already (`ranked`). Returns notes for the
    summary. A failure here is logged and noted, never allowed to lose the decision already made."""
    from trimtab.explain.run import explain_run, sensitivity_run

    int8 = [c for c in candidates if c.artifact.precision == "int8"]
    chosen = next((c for c in int8 if c.artifact.name == summary.chosen), None)
    target = chosen or (min(int8, key=lambda c: c.evaluation.drop_points) if int8 else None)
    method = CalibrationMethod(target.artifact.calibration) if target else next(iter(calibrations))
    over_budget = target is not None and target.evaluation.drop_points > summary.budget
    try:
        notes = explain_run(model, calibrations[method], setup["val"], target.artifact if target else None,
                            folder.root).notes
        if over_budget and not ranked:
            notes += sensitivity_run(model, calibrations[method], setup["val"], target.artifact, folder.root).notes
    except Exception as exc:  # diagnostics must not cost the user the tuning result
        log.exception("the explain pass failed")
        return [f"The explain pass failed ({type(exc).__name__}: {exc}); the decision above is unaffected."]
    return notes


def _summarise(model, candidates, setup, config: TuneConfig, folder: RunFolder, timer: StageTimer, command: str):
    from trimtab import __version__
    from trimtab.report.summary import CandidateSummary, Summary
    from trimtab.search import decide, passes

    scores = [_score(c.evaluation, c.artifact.name, c.artifact.precision, c.bench) for c in candidates]
    decision = decide(scores, config.budget, rule=config.decision, objective=config.objective,
                      baseline=candidates[0].artifact.name, latency_slo_ms=config.latency_slo_ms, favour=config.favour)
    rows = [_candidate_row(c, folder, passes(score, config.budget, config.decision))
            for c, score in zip(candidates, scores)]
    baseline = candidates[0]
    return Summary(
        trimtab_version=__version__,
        model={"path": str(model.path) if model.path else model.name, "sha256": model.sha256},
        target={"backend": config.target.value, "device": _target_device(config.target)},
        task=setup["task"].value,
        metric=setup["metric"],
        budget=config.budget,
        baseline={"name": baseline.artifact.name, "metric_value": _finite(baseline.evaluation.value)},
        candidates=[CandidateSummary(**row) for row in rows],
        chosen=decision.chosen,
        reason=decision.reason,
        timings_s=dict(timer.seconds),
        command=command,
        notes=_notes(candidates, setup, config),
        decision=decision.to_dict(),
        scenario=_scenario_dict(config),
    )


def _scenario_dict(config: TuneConfig) -> dict:
    if not config.scenario:
        return {}
    from trimtab.scenarios import get_scenario

    return get_scenario(config.scenario).to_dict()


def _notes(candidates: list[Measured], setup: dict, config: TuneConfig) -> list[str]:
    """Plain-language observations a person should see beside the table."""
    notes = []
    n = candidates[0].evaluation.n_samples
    if setup["metric"] in ("top1", "top5", "agreement") and n and 100.0 / n > config.budget:
        notes.append(
            f"The validation set has {n} samples: one changed prediction moves the metric by {100.0 / n:.2f} points, "
            f"more than the {config.budget:g}-point budget. Use more validation data for a finer decision."
        )
    for c in candidates:
        if c.artifact.precision == "fp16" and c.bench.speedup < 0.95:
            notes.append(
                f"fp16 runs at {c.bench.speedup:.2f}x fp32 on this target: most CPUs have no fast fp16 kernels, "
                "so fp16 pays only on GPUs."
            )
        low, high = c.evaluation.ci95
        if c.evaluation.drop_points <= config.budget < high and config.decision == DecisionRule.POINT:
            notes.append(
                f"{c.artifact.name}: the drop's 95% interval reaches {high:.2f} points, over the budget; "
                "the evidence that it is within budget is weak."
            )
    return notes


def _candidate_row(c: Measured, folder: RunFolder, ok: bool) -> dict:
    from trimtab._onnx_io import stored_bytes

    evaluation, bench = c.evaluation, c.bench
    return dict(
        name=c.artifact.name,
        precision=c.artifact.precision,
        metric_value=_finite(evaluation.value),
        metric_drop=_finite(evaluation.drop_points),
        metric_ci95=[_finite(v) for v in evaluation.ci95],
        throughput_per_s=_finite(bench.throughput_per_s),
        latency_ms={k: _finite(v) for k, v in bench.latency_ms.items()},
        batch_size=bench.batch_size,
        model_bytes=stored_bytes(c.path),  # the file, with its data file over 2 GB
        peak_mem_bytes=c.peak_mem_bytes,
        artifact=str(c.path.relative_to(folder.root)),
        within_budget=ok,
        # bench ratios are time ratios (candidate / fp32 per round); speed-ups are their inverse.
        speedup_vs_fp32=_finite(bench.speedup),
        speedup_spread=[_finite(1.0 / bench.ratio_p90), _finite(1.0 / bench.ratio_p10)],
        calibration=c.artifact.calibration,
        flavour=c.artifact.flavour,
        p_value=_finite(evaluation.p_value) if evaluation.p_value is not None else None,
        extras={k: _finite(v) for k, v in (evaluation.extras or {}).items() if isinstance(v, (int, float))},
        fallback_nodes=list(c.artifact.notes.get("fallback_nodes", [])),
        layer_precisions=dict(bench.layer_precisions),
    )


def _finite(value):
    """JSON has no NaN/Inf: map them to None (they are shown as blank in the report)."""
    import math

    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _write_outputs(summary, candidates: list[Measured], folder: RunFolder) -> None:
    from trimtab._io import atomic_copy, atomic_write_json
    from trimtab.report import write_report

    chosen = next(c for c in candidates if c.artifact.name == summary.chosen)
    atomic_write_json(folder.plan, _plan_of(chosen.artifact))
    atomic_copy(chosen.path, folder.models / "chosen.onnx")
    summary.save(folder.summary)
    write_report(summary, folder.report)


def _plan_of(artifact) -> dict:
    """The chosen candidate as a PrecisionPlan: its precision by default, with every node the
    build left in higher precision listed as an exact-name fp32 rule."""
    from trimtab.build.plan import PrecisionPlan

    precision = {"mixed": "int8"}.get(artifact.precision, artifact.precision)
    plan = PrecisionPlan.uniform(precision if precision in ("fp32", "fp16", "int8") else "fp32")
    kept = artifact.notes.get("kept_fp32") or artifact.notes.get("skipped") or {}
    for name in dict.fromkeys([*artifact.notes.get("fallback_nodes", []), *kept]):
        plan = plan.with_rule("name", name, "fp32")
    return plan.to_dict()
