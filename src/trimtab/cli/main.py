"""The `trimtab` command: a thin translator from flags to the Python API.

stdout carries data (tables, paths); logs, progress bars and errors go to stderr. A
`TrimtabError` becomes one message plus a hint and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from trimtab.errors import TrimtabError

log = logging.getLogger("trimtab.cli")
from trimtab.options import CalibrationMethod, DecisionRule, Int8Flavour, Precision, Target, Task

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Choose the fastest precision (fp32, fp16, int8) whose accuracy is still acceptable.",
)

DEMO_MODEL = "example:effnet-lite0"


def main() -> None:
    """Entry point: run the app, turning trimtab errors into one clear message and exit code 2."""
    try:
        app(standalone_mode=False)
    except TrimtabError as error:
        _print_error(error.message, error.hint)
        sys.exit(2)
    except ValueError as error:  # config validation (__post_init__)
        _print_error(str(error), "check the option values; `trimtab COMMAND --help` lists them")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        _print_error("interrupted", None)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as error:  # click usage errors carry their own exit code
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Exit):
            sys.exit(error.exit_code)
        raise


def _print_error(message: str, hint: str | None) -> None:
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("trimtab")
    root.handlers = [h for h in root.handlers if not isinstance(h, logging.StreamHandler)]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    handler.setLevel(level)


# ---------------------------------------------------------------------------------------------
# shared option helpers

VerboseOpt = typer.Option(0, "--verbose", "-v", count=True, help="Log more to stderr (-v info, -vv debug).")
ProgressOpt = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on when stderr is a terminal).")


def _open_data(path: Optional[Path], model_source: str, preset: Optional[str], role: str):
    """A Dataset for a CLI path. Preprocessing: the example's own for an example; else, for image
    folders, the preset (default imagenet) fitted to the model's input name, size and channels."""
    if path is None:
        return None
    from trimtab.data import open_dataset

    if model_source.startswith("example:") and not preset:
        return open_dataset(path, _example_transform(model_source), name=role)
    if Path(path).is_dir():
        return open_dataset(path, _image_transform_for(model_source, preset), name=role)
    return open_dataset(path, None, name=role)


def _image_transform_for(model_source: str, preset: Optional[str]):
    """The preset with the model's input name, and its spatial size and channels when static."""
    from trimtab.data import transform_from_options
    from trimtab.load import load_model

    model = load_model(model_source)
    name = model.input_names[0]
    dims = model.input_shapes()[name]
    size = channels = None
    if len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[1:]):
        channels, height, width = dims[1:]
        size = height if height == width else None
    if preset is None:
        log.warning("no --preset given for image data: using 'imagenet' preprocessing (mean/std, 224 crop)")
    return transform_from_options(preset=preset, input_name=name, size=size, channels=channels)


def _example_transform(model_source: str):
    from trimtab.examples import get_example

    example = get_example(model_source.split(":", 1)[1])
    return example.transform() if hasattr(example, "transform") else None


class _Bars:
    """Maps the library's progress callback (stage, done, total) onto rich progress bars."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total or None)
        self.progress.update(self.tasks[stage], completed=done, total=total or None)

    @property
    def callback(self):
        return self if self.enabled else None


# ---------------------------------------------------------------------------------------------
# tune and demo


def _run_tune(model: str, calib, val, *, out: Path, preset, progress, verbose: int, **options) -> None:
    """`options`: TuneConfig fields; None means "not given" (the scenario's or the default value)."""
    from trimtab.pipeline import TuneConfig, tune
    from trimtab.scenarios import get_scenario

    _setup_logging(verbose)
    fields = {}
    if options.get("scenario"):
        fields.update(get_scenario(options["scenario"]).config_fields())
    methods = options.pop("methods", None)
    if methods:
        fields["methods"] = tuple(methods)
    fields.update({key: value for key, value in options.items() if value is not None})
    config = TuneConfig(**fields)
    calib_data = None if calib is None and not config.require_calibration else _open_data(calib, model, preset,
                                                                                          "calibration")
    val_data = _open_data(val, model, preset, "validation")
    command = "trimtab " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    with _Bars(progress) as bars:
        summary = tune(model, calib_data, val_data, config, out=out, progress=bars.callback, command=command)
    _print_summary(summary, out)


def _print_summary(summary, out: Path) -> None:
    typer.echo(f"{'candidate':<28} {summary.metric:>10} {'drop':>7} {'95% CI':>17} {'per s':>9} {'vs fp32':>8} {'MB':>6}  ok")
    for c in summary.candidates:
        ratio = f"{c.speedup_vs_fp32:.2f}x" if c.speedup_vs_fp32 else "-"
        ci = f"[{c.metric_ci95[0]:+.2f},{c.metric_ci95[1]:+.2f}]"
        mark = "*" if c.name == summary.chosen else ("y" if c.within_budget else "n")
        typer.echo(
            f"{c.name:<28} {c.metric_value:>10.4f} {c.metric_drop:>+7.2f} {ci:>17} {c.throughput_per_s:>9.1f} "
            f"{ratio:>8} {c.model_bytes / 1e6:>6.1f}  {mark}"
        )
    search = summary.search or {}
    if search.get("steps"):
        typer.echo(f"search: {search['status']} from {search.get('start')}, {search.get('evaluations', 0)} evaluation(s)"
                   f" run, {search.get('reused', 0)} reused, best {search.get('best') or 'none'}")
    typer.echo(f"chosen: {summary.chosen}: {summary.reason}")
    for warning in (summary.decision or {}).get("warnings", []):
        typer.echo(f"warning: {warning}")
    recommendation = (summary.decision or {}).get("recommendation")
    if recommendation:
        typer.echo(f"recommendation: {recommendation['why']}")
    typer.echo(f"run folder: {out}")


SCENARIO_HELP = ("Deployment preset: surveillance (batch-32 throughput, int8 favoured), edge (batch-1 latency, "
                 "fp16 favoured), recsys (p99 under 10 ms), medical (0.1 point, strict). Explicit options win.")


@app.command()
def tune(
    model: str = typer.Argument(..., help="An .onnx file or example:NAME (see `trimtab examples`)."),
    calib: Optional[Path] = typer.Option(None, help="Calibration data: image folder, .npz or text file."),
    val: Optional[Path] = typer.Option(None, help="Validation data (labelled when possible)."),
    task: Optional[Task] = typer.Option(None, help="classify, embed or generic (default: the example's, else classify)."),
    metric: Optional[str] = typer.Option(None, help="top1, agreement or cosine (default: by task and labels)."),
    budget: Optional[float] = typer.Option(None, help="Accepted metric drop in points (absolute; default 1)."),
    decision: Optional[DecisionRule] = typer.Option(
        None, help="point: the measured drop within budget (default); strict: its 95% upper bound too."),
    scenario: Optional[str] = typer.Option(None, help=SCENARIO_HELP),
    target: Target = typer.Option(Target.ORT_CPU, help="Where the model will run."),
    method: Optional[list[CalibrationMethod]] = typer.Option(None, "--method", help="Calibration method(s); default all."),
    batch_size: Optional[int] = typer.Option(None, help="Benchmark batch size (default 8)."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads (default: all cores)."),
    bench_seconds: float = typer.Option(20.0, help="Total interleaved timing time."),
    smoothing: bool = typer.Option(True, help="Offer a SmoothQuant-style int8 candidate (transformers)."),
    fp8: Optional[bool] = typer.Option(None, "--fp8/--no-fp8", help="--target gpu: an fp8 candidate (default: where "
                                       "the GPU has fp8 tensor cores, Ada/Hopper and later)."),
    search: bool = typer.Option(True, help="Search a mixed plan when full int8 misses the budget."),
    max_evals: int = typer.Option(8, help="Full evaluations the mixed-precision search may spend."),
    time_limit: Optional[float] = typer.Option(None, help="Seconds for the whole run; the search stops in time."),
    preset: Optional[str] = typer.Option(None, help="Preprocessing preset for image data (e.g. imagenet)."),
    out: Path = typer.Option(Path("trimtab-run"), help="Run folder; rerunning into the same folder resumes."),
    progress: Optional[bool] = ProgressOpt,
    verbose: int = VerboseOpt,
) -> None:
    """Calibrate, build every candidate, measure accuracy and speed, search a mixed plan if needed,
    choose, and write the run folder. A killed run resumes with the same command."""
    _run_tune(model, calib, val, out=out, preset=preset, progress=progress, verbose=verbose, budget=budget,
              task=task, metric=metric, target=target, methods=method, batch_size=batch_size, threads=threads,
              bench_seconds=bench_seconds, decision=decision, scenario=scenario, search=search, smoothing=smoothing,
              max_evals=max_evals, time_limit_s=time_limit, include_fp8=fp8)


@app.command()
def demo(
    budget: float = typer.Option(1.0, help="Accepted metric drop in points (absolute)."),
    method: Optional[list[CalibrationMethod]] = typer.Option(None, "--method", help="Calibration method(s); default all."),
    batch_size: int = typer.Option(8, help="Benchmark batch size."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads (default: all cores)."),
    bench_seconds: float = typer.Option(20.0, help="Total interleaved timing time."),
    out: Path = typer.Option(Path("trimtab-demo"), help="Run folder."),
    progress: Optional[bool] = ProgressOpt,
    verbose: int = VerboseOpt,
) -> None:
    """`trimtab tune example:effnet-lite0` end to end on ONNX Runtime CPU."""
    _run_tune(DEMO_MODEL, None, None, out=out, preset=None, progress=progress, verbose=verbose, budget=budget,
              target=Target.ORT_CPU, methods=method, batch_size=batch_size, threads=threads,
              bench_seconds=bench_seconds)


@app.command()
def examples() -> None:
    """List the bundled examples (use them as MODEL = example:NAME)."""
    from trimtab.examples import list_examples

    for example in list_examples():
        typer.echo(f"{example.name:<14} {example.task:<9} {example.metric:<10} {example.description}")


# ---------------------------------------------------------------------------------------------
# each stage on its own


@app.command("calibrate")
def calibrate_cmd(
    model: str = typer.Argument(..., help="An .onnx file or example:NAME."),
    calib: Optional[Path] = typer.Option(None, help="Calibration data (default: the example's)."),
    method: Optional[list[CalibrationMethod]] = typer.Option(None, "--method", help="Method(s); default all."),
    preset: Optional[str] = typer.Option(None, help="Preprocessing preset for image data."),
    out: Path = typer.Option(Path("trimtab-calibration"), help="Folder for ranges-METHOD.json and trt.cache."),
    target: Target = typer.Option(Target.ORT_CPU, help="Where the activations are computed: ort-cpu, or gpu "
                                  "(trimtab's engine; histograms counted on the device)."),
    progress: Optional[bool] = ProgressOpt,
    verbose: int = VerboseOpt,
) -> None:
    """Compute activation ranges (histograms cached) and write them, plus a TensorRT-format cache."""
    from trimtab.load import load_model
    from trimtab.pipeline import RunFolder, TuneConfig, _calibrate_all, _resolve_setup

    _setup_logging(verbose)
    config = TuneConfig(methods=tuple(method) if method else tuple(CalibrationMethod), target=target)
    data = _open_data(calib, model, preset, "calibration")
    setup = _resolve_setup(model, data, data, config)  # None for both: the example's own data
    loaded = load_model(model)
    folder = RunFolder(out)
    with _Bars(progress) as bars:
        results = _calibrate_all(loaded, setup["calib"], config, folder, bars.callback)
    for name in sorted(results):
        typer.echo(str(folder.calibration / f"ranges-{name.value}.json"))
    typer.echo(str(folder.calibration / "trt.cache"))


@app.command("build")
def build_cmd(
    model: str = typer.Argument(..., help="An .onnx file or example:NAME."),
    precision: Precision = typer.Option(..., help="fp32, fp16, bf16 (for GPUs), int8 or fp8 (float8e4m3fn Q/DQ "
                                        "for GPUs)."),
    out: Path = typer.Option(..., help="Output .onnx file."),
    ranges: Optional[Path] = typer.Option(None, help="int8: ranges-METHOD.json from `trimtab calibrate`."),
    trt_cache: Optional[Path] = typer.Option(None, help="int8: a TensorRT calibration cache to use as ranges."),
    flavour: Int8Flavour = typer.Option(Int8Flavour.ORT_CPU, help="int8 Q/DQ placement: ort-cpu or tensorrt."),
    fp16_elsewhere: bool = typer.Option(False, "--fp16-elsewhere", help="int8: run what stays unquantized in fp16 "
                                        "(for GPUs; Q/DQ stay fp32)."),
    verbose: int = VerboseOpt,
) -> None:
    """Build one typed ONNX artifact."""
    from trimtab.build import build_bf16, build_fp8, build_fp16, build_fp32, build_int8
    from trimtab.load import load_model

    _setup_logging(verbose)
    loaded = load_model(model)
    if precision == Precision.FP32:
        artifact = build_fp32(loaded)
    elif precision == Precision.FP16:
        artifact = build_fp16(loaded)
    elif precision == Precision.BF16:
        artifact = build_bf16(loaded)
    elif precision == Precision.FP8:  # placed as the tensorrt flavour, fp16 elsewhere (a GPU runs it)
        artifact = build_fp8(loaded, _read_ranges(ranges, trt_cache))
    else:
        artifact = build_int8(loaded, _read_ranges(ranges, trt_cache), flavour,
                              unquantized=Precision.FP16 if fp16_elsewhere else Precision.FP32)
    typer.echo(str(artifact.save(out)))


def _read_ranges(ranges: Optional[Path], trt_cache: Optional[Path]):
    import json

    from trimtab.calibrate import read_trt_cache
    from trimtab.calibrate.ranges import TensorRange
    from trimtab.errors import CalibrationError

    if trt_cache is not None:
        return read_trt_cache(trt_cache)
    if ranges is None:
        raise CalibrationError(
            "an int8 build needs activation ranges",
            hint="run `trimtab calibrate MODEL --calib DATA` and pass --ranges OUT/calibration/ranges-entropy.json",
        )
    try:
        data = json.loads(Path(ranges).read_text(encoding="utf-8"))
        return {name: TensorRange(**values) for name, values in data.items()}
    except (OSError, ValueError, TypeError) as exc:
        raise CalibrationError(
            f"cannot read ranges from '{ranges}': {exc}",
            hint="pass a ranges-METHOD.json written by `trimtab calibrate`",
        ) from exc


@app.command("eval")
def eval_cmd(
    reference: str = typer.Argument(..., help="The fp32 model (.onnx or example:NAME)."),
    candidates: list[Path] = typer.Argument(..., help="Candidate .onnx artifacts."),
    val: Optional[Path] = typer.Option(None, help="Validation data (default: the example's)."),
    task: Optional[Task] = typer.Option(None, help="classify, embed or generic."),
    metric: Optional[str] = typer.Option(None, help="top1, agreement or cosine."),
    preset: Optional[str] = typer.Option(None, help="Preprocessing preset for image data."),
    batch_size: int = typer.Option(16, help="Evaluation batch size."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads."),
    verbose: int = VerboseOpt,
) -> None:
    """Evaluate candidates against the fp32 reference (metric, drop and its 95% interval)."""
    from trimtab.backends import get_backend
    from trimtab.load import load_model
    from trimtab.measure import collect_outputs, evaluate
    from trimtab.pipeline import TuneConfig, _resolve_setup

    _setup_logging(verbose)
    data = _open_data(val, reference, preset, "validation")
    setup = _resolve_setup(reference, data if data is not None else None, data, TuneConfig(task=task, metric=metric))
    ref_model = load_model(reference)
    with get_backend("ort-cpu", ref_model.proto, threads=threads) as backend:
        ref = collect_outputs(backend, setup["val"], batch_size=batch_size)
    typer.echo(f"{'candidate':<40} {setup['metric']:>10} {'drop':>7} {'95% CI':>17}")
    for path in candidates:
        with get_backend("ort-cpu", str(path), threads=threads) as backend:
            out = collect_outputs(backend, setup["val"], batch_size=batch_size)
        result = evaluate(setup["task"], setup["metric"], out, ref, labels=ref.labels,
                          extra_metrics=setup["extra_metrics"])
        ci = f"[{result.ci95[0]:+.2f},{result.ci95[1]:+.2f}]"
        typer.echo(f"{str(path):<40} {result.value:>10.4f} {result.drop_points:>+7.2f} {ci:>17}")


@app.command("bench")
def bench_cmd(
    artifacts: list[Path] = typer.Argument(..., help=".onnx artifacts; the first is the baseline."),
    batch_size: list[int] = typer.Option([8], "--batch-size", help="Batch size (repeat for a sweep)."),
    seconds: float = typer.Option(20.0, help="Interleaved timing time per batch size."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads."),
    verbose: int = VerboseOpt,
) -> None:
    """Time artifacts interleaved (round-robin, rotating order) on random inputs of their shape."""
    from trimtab.backends import get_backend
    from trimtab.load import load_model
    from trimtab.measure import bench_interleaved

    _setup_logging(verbose)
    reference = load_model(artifacts[0])
    names = [f"{i}:{p.stem}" for i, p in enumerate(artifacts)]
    backends = {n: get_backend("ort-cpu", str(p), threads=threads).prepare() for n, p in zip(names, artifacts)}
    typer.echo(f"{'artifact':<32} {'batch':>5} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8} {'speedup':>8}")
    try:
        for size in batch_size:
            results = bench_interleaved(backends, _random_feeds(reference, size), baseline=names[0], min_seconds=seconds)
            for name in names:
                r = results[name]
                typer.echo(f"{name:<32} {size:>5} {r.throughput_per_s:>9.1f} {r.latency_ms['p50']:>8.2f} "
                           f"{r.latency_ms['p99']:>8.2f} {r.speedup:>7.2f}x")
    finally:
        for backend in backends.values():
            backend.close()


def _random_feeds(model, batch_size: int) -> dict:
    """Random inputs from the declared shapes (symbolic dims: batch, then 128 for sequence axes)."""
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {}
    dtypes = model.input_dtypes()
    for name, dims in model.input_shapes().items():
        shape = [batch_size if i == 0 else (d if isinstance(d, int) and d > 0 else 128) for i, d in enumerate(dims)]
        dtype = np.dtype(dtypes[name])
        if dtype.kind in "iu":
            feeds[name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(dtype)
    return feeds


# ---------------------------------------------------------------------------------------------
# explain


@app.command("compare")
def compare_cmd(
    reference: str = typer.Argument(..., help="The fp32 model (.onnx or example:NAME)."),
    candidate: Path = typer.Argument(..., help="A candidate .onnx (e.g. from a run folder's models/)."),
    data: Path = typer.Option(..., "--data", help="Inputs to compare on: image folder, .npz or text file."),
    preset: Optional[str] = typer.Option(None, help="Preprocessing preset for image data."),
    out: Optional[Path] = typer.Option(None, help="Write the per-node result as JSON (e.g. layers.json)."),
    top: int = typer.Option(10, help="Show the N nodes with the lowest accumulated SQNR."),
    batch_size: int = typer.Option(8, help="Batch size."),
    max_samples: int = typer.Option(64, help="Compare on at most this many samples."),
    origin_db: float = typer.Option(30.0, help="Local SQNR (dB) below which a node introduces error."),
    progress: Optional[bool] = ProgressOpt,
    verbose: int = VerboseOpt,
) -> None:
    """Per node: error of the candidate end to end (accumulated) and of the node alone fed fp32
    inputs (local), and the first node that introduces error."""
    from trimtab.explain.compare import compare
    from trimtab.load import load_model

    _setup_logging(verbose)
    dataset = _open_data(data, reference, preset, "compare")
    with _Bars(progress) as bars:
        result = compare(load_model(reference), candidate, dataset, batch_size=batch_size, max_samples=max_samples,
                         origin_db=origin_db, progress=bars.callback)
    _print_compare(result, top)
    if out is not None:
        typer.echo(f"written: {result.save(out)}")


def _print_compare(result, top: int) -> None:
    def db(stats) -> str:
        return "-" if stats is None else f"{stats.sqnr_db:.1f}"

    typer.echo(f"{'node':<32} {'op':<18} {'acc SQNR dB':>11} {'local dB':>9} {'cosine':>8} {'max abs':>10}")
    for row in result.worst(top):
        acc = row.accumulated
        typer.echo(f"{row.node[:32]:<32} {row.op_type[:18]:<18} {db(acc):>11} {db(row.local):>9} "
                   f"{acc.cosine:>8.5f} {acc.max_abs:>10.4g}")
    typer.echo(f"origin: {result.origin or '-'} ({result.origin_reason})")
    typer.echo(f"samples: {result.n_samples}; numerics: {result.numerics}")
    if result.deployed_max_diff is not None:
        typer.echo(f"ONNX Runtime's optimised run differs from that simulation by a relative max diff of "
                   f"{result.deployed_max_diff:.3g}")
    if result.capture_changes_outputs:
        typer.echo(f"warning: capturing intermediate tensors changed the final outputs (relative max diff "
                   f"{result.capture_max_diff:.3g} > {result.capture_tolerance:g}); the figures may not "
                   "describe the uncaptured run")
    else:
        typer.echo(f"capture check: final outputs agree with and without capture (relative max diff "
                   f"{result.capture_max_diff:.3g})")


# ---------------------------------------------------------------------------------------------
# report


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder written by `trimtab tune` (it holds summary.json)."),
    verbose: int = VerboseOpt,
) -> None:
    """Re-render RUN_DIR/report.html from the saved results alone (no model, no re-runs)."""
    from trimtab.report import write_report_for_run

    _setup_logging(verbose)
    typer.echo(str(write_report_for_run(run_dir)))


if __name__ == "__main__":
    main()
