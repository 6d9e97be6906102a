"""fp32 vs fp16 vs int8 (ort-cpu flavour) on ONNX Runtime's CPU provider, batch 8, 2 threads,
measured on exactly what `trimtab tune` ships and times.

Models, both through `trimtab.load.load_model`:
  resnet50      this project's ResNet-50 (bench/resnet50.py: random weights, BN statistics from
                random images) exported by load_model(module, example_inputs=...).
  effnet-lite0  `example:effnet-lite0` (ImageNet weights, ReLU6, inputs (x - 127) / 128).

Candidates: fp32 = build_fp32, fp16 = build_fp16, int8-entropy and int8-mse =
trimtab.calibrate.calibrate(model, data, method) + build_int8(model, ranges, "ort-cpu",
skip_tensors=sentinel tensors), and ONNX Runtime's own quantize_static on the same calibration
data as the peer. The int8 method tune would choose on accuracy is marked "chosen"; it is the one
profiled per layer kind.

Calibration data: resnet50 - 32 random-normal images (seed 1; they match the random-image BN
statistics); effnet-lite0 - the example's calibration_data() (96 crops of bundled photos).
Accuracy against fp32: resnet50 - 16 other random-normal images (seed 2), top-1 agreement and
logits SQNR; effnet-lite0 - top-1 on validation_data() (20 labelled ImageNet photos) and
agreement + SQNR on agreement_data() (128 crops).

Timing: every candidate is a `trimtab.backends.ort_cpu.OrtCpuBackend` (ORT_ENABLE_ALL,
WeightBiasQuantization off, ORT's default thread-pool spinning) timed by `trimtab.measure.bench_interleaved`
on the first 8 evaluation samples - the same classes tune uses. Rounds rotate the order; the
speed-up is the median over rounds of fp32 time / candidate time in the same round.

    PYTHONPATH=src python bench/cpu_precisions.py [--rounds 20] [--reps 3] [--write docs/perf.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import write_marked_block

from trimtab.backends.ort_cpu import DISABLED_OPTIMIZERS, OrtCpuBackend
from trimtab.build import build_fp16, build_fp32, build_int8
from trimtab.calibrate import calibrate
from trimtab.data import Dataset
from trimtab.data.dataset import Sample
from trimtab.load import load_model
from trimtab.measure import (
    bench_interleaved,
    collect_outputs,
    evaluate,
    sqnr_db,
    top1_agreement,
    topk_accuracy,
)

BATCH = 8
THREADS = 2
METHODS = ("entropy", "mse")
MARKER = "cpu_precisions"
FILE_TITLE = "# CPU performance of trimtab's candidates"


@dataclass
class Workload:
    name: str
    model: object  # trimtab.load.model.Model
    calibration: Dataset
    evaluation: dict[str, Dataset]  # set label -> data; the first one's first batch is timed


@dataclass
class Candidate:
    name: str
    source: onnx.ModelProto | str  # artifact proto, or a path (the peer)
    size_bytes: int
    build_s: float
    method: str | None = None
    notes: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)  # eval set label -> trimtab.measure.Outputs
    chosen: bool = False

    def model_bytes(self) -> bytes:
        return self.source.SerializeToString() if isinstance(self.source, onnx.ModelProto) else Path(self.source).read_bytes()


# --- models and data ---------------------------------------------------------------------------


def random_images(count: int, seed: int, name: str) -> Dataset:
    """`count` standard-normal 3x224x224 images: what ResNet-50's random-image BN statistics expect."""
    rng = np.random.default_rng(seed)
    samples = [Sample({"input": rng.standard_normal((3, 224, 224), dtype=np.float32)}, None, f"normal-{seed}#{i}")
               for i in range(count)]
    return Dataset(samples, name=name)


def resnet50() -> Workload:
    import torch
    from resnet50 import ResNet50, calibrate_bn

    torch.manual_seed(0)
    module = calibrate_bn(ResNet50())
    model = load_model(module, example_inputs={"input": torch.zeros(1, 3, 224, 224)}, name="resnet50")
    return Workload("resnet50", model, random_images(32, seed=1, name="random-normal:calibration"),
                    {"16 random": random_images(16, seed=2, name="random-normal:evaluation")})


def effnet_lite0() -> Workload:
    from trimtab.examples import get_example

    example = get_example("effnet-lite0")
    model = load_model("example:effnet-lite0")
    evaluation = {"20 photos": example.validation_data(), "128 crops": example.agreement_data()}
    return Workload("effnet-lite0", model, example.calibration_data(), evaluation)


# --- candidates --------------------------------------------------------------------------------


def build_candidates(work: Workload, cache_dir: Path) -> list[Candidate]:
    """fp32, fp16 and one int8 per method. Calibration uses a fresh cache, so its time is real:
    the first method's includes the one histogram pass the methods share (as in tune)."""
    model = work.model
    candidates = []
    for build in (build_fp32, build_fp16):
        started = time.perf_counter()
        artifact = build(model)
        candidates.append(Candidate(artifact.name, artifact.proto, artifact.size_bytes(), time.perf_counter() - started))
    for method in METHODS:
        started = time.perf_counter()
        calibration = calibrate(model, work.calibration, method, cache_dir=cache_dir, batch_size=BATCH)
        calibrated = time.perf_counter() - started
        artifact = build_int8(model, calibration.ranges, "ort-cpu", method_name=method,
                              skip_tensors=set(calibration.sentinel_tensors))
        seconds = time.perf_counter() - started
        notes = {"quantized": len(artifact.notes["quantized"]), "skipped": len(artifact.notes["skipped"])}
        print(f"  {artifact.name}: calibration {calibrated:.1f} s ({calibration.num_samples} samples, histograms "
              f"{'reused' if calibration.from_cache else 'collected'}), {notes['quantized']} nodes quantized, "
              f"{notes['skipped']} left float", flush=True)
        candidates.append(Candidate(artifact.name, artifact.proto, artifact.size_bytes(), seconds, method, notes))
    return candidates


def ort_quantizer_peer(work: Workload, folder: Path) -> Candidate:
    """ONNX Runtime's own static quantizer on the same calibration data (MinMax, per-channel,
    U8S8, QDQ): the reference our ort-cpu placement must match or beat."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(work.calibration.batches(BATCH))

        def get_next(self):
            return next((batch.inputs for batch in self.batches), None)

    source, target = folder / f"{work.name}-peer-in.onnx", folder / f"{work.name}-peer-out.onnx"
    onnx.save(work.model.proto, str(source))
    started = time.perf_counter()
    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Candidate("int8 (ORT quantizer, peer)", str(target), target.stat().st_size, time.perf_counter() - started)


# --- accuracy and timing -----------------------------------------------------------------------


def score(candidates: list[Candidate], work: Workload) -> dict[str, OrtCpuBackend]:
    """Run every candidate on every evaluation set; return the prepared backends (kept for timing)."""
    backends = {}
    for candidate in candidates:
        backend = OrtCpuBackend(candidate.source, threads=THREADS).prepare()
        backends[candidate.name] = backend
        for label, dataset in work.evaluation.items():
            candidate.outputs[label] = collect_outputs(backend, dataset, batch_size=BATCH, name=candidate.name)
    return backends


def accuracy_key(candidate: Candidate, reference: Candidate) -> tuple:
    """What tune's decision sees first (the drop of top-1, or of agreement without labels, on
    the first evaluation set), then agreement and SQNR on the last set as tie-breakers."""
    first, last = next(iter(candidate.outputs)), list(candidate.outputs)[-1]
    cand, ref = candidate.outputs[first], reference.outputs[first]
    metric = "top1" if ref.labels is not None else "agreement"
    drop = evaluate("classify", metric, cand, ref, labels=ref.labels).drop_points
    return (drop, -top1_agreement(candidate.outputs[last].values, reference.outputs[last].values),
            -sqnr_db(candidate.outputs[last].values, reference.outputs[last].values))


def mark_chosen(candidates: list[Candidate]) -> Candidate:
    ours = [c for c in candidates if c.method]
    best = min(ours, key=lambda c: accuracy_key(c, candidates[0]))
    best.chosen = True
    return best


def time_candidates(backends: dict[str, OrtCpuBackend], work: Workload, rounds: int, reps: int) -> dict:
    first = next(iter(work.evaluation.values()))
    feeds = {name: np.ascontiguousarray(array) for name, array in next(first.batches(BATCH)).inputs.items()}
    print(f"  timing {len(backends)} candidates: {rounds} rounds x {reps} calls, interleaved", flush=True)
    try:
        return bench_interleaved(backends, feeds, baseline="fp32", rounds=rounds, min_seconds=0.0,
                                 calls_per_round=reps)
    finally:
        for backend in backends.values():
            backend.close()


# --- where the time goes ----------------------------------------------------------------------


CONV_KERNELS = {"Conv", "FusedConv", "QLinearConv"}


def session_options(**settings) -> ort.SessionOptions:
    """OrtCpuBackend's options (2 threads, default spinning) plus profiling/dumping settings."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in settings.items():
        setattr(options, key, value)
    return options


def open_session(model_bytes: bytes, **settings) -> ort.InferenceSession:
    return ort.InferenceSession(model_bytes, session_options(**settings), providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


def fused_ops(candidate: Candidate, folder: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (its optimised form of the artifact)."""
    path = str(folder / f"{candidate.name}-optimised.onnx")
    open_session(candidate.model_bytes(), optimized_model_filepath=path)
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def conv_kinds(proto: onnx.ModelProto) -> list[str]:
    """stem / depthwise / pointwise / spatial for each Conv, in graph order."""
    kinds = []
    for node in (n for n in proto.graph.node if n.op_type == "Conv"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if not kinds:
            kinds.append("stem conv")
        elif attrs.get("group", 1) > 1:
            kinds.append("depthwise conv")
        elif list(attrs.get("kernel_shape", [])) == [1, 1]:
            kinds.append("pointwise conv")
        else:
            kinds.append("spatial conv")
    return kinds


def kernel_times(candidate: Candidate, feeds: dict, runs: int = 5) -> tuple[list[float], dict[str, float]]:
    """ONNX Runtime's profiler: ms per run of each conv kernel (execution order) and of every
    other op type."""
    session = open_session(candidate.model_bytes(), enable_profiling=True)
    for _ in range(runs):
        session.run(None, feeds)
    profile = session.end_profiling()
    with open(profile) as handle:
        events = json.load(handle)
    os.remove(profile)
    convs: dict[str, float] = {}
    others: dict[str, float] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"]["op_name"]
        bucket, key = (convs, event["name"]) if op in CONV_KERNELS else (others, op)
        bucket[key] = bucket.get(key, 0.0) + event["dur"] / runs / 1000
    return list(convs.values()), others


def time_by_layer_kind(work: Workload, fp32: Candidate, int8: Candidate) -> list[str]:
    """fp32 vs int8 kernel time per layer kind: shows which kernels int8 speeds up and which not."""
    first = next(iter(work.evaluation.values()))
    feeds = {name: np.ascontiguousarray(array) for name, array in next(first.batches(BATCH)).inputs.items()}
    kinds = conv_kinds(work.model.proto)
    fp32_convs, fp32_other = kernel_times(fp32, feeds)
    int8_convs, int8_other = kernel_times(int8, feeds)
    if not (len(kinds) == len(fp32_convs) == len(int8_convs)):
        return [f"(layer-kind profile skipped: {len(kinds)} convs, {len(fp32_convs)}/{len(int8_convs)} profiled)", ""]
    rows = {}
    for kind, a, b in zip(kinds, fp32_convs, int8_convs):
        count, fa, fb = rows.get(kind, (0, 0.0, 0.0))
        rows[kind] = (count + 1, fa + a, fb + b)
    rows["other ops"] = (0, sum(fp32_other.values()), sum(int8_other.values()))
    lines = [f"| layers | fp32 ms | {int8.name} ms | int8 speed-up |", "| --- | --- | --- | --- |"]
    for kind, (count, a, b) in rows.items():
        label = f"{kind} x{count}" if count else kind
        lines.append(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    total_a = sum(a for _, a, _ in rows.values())
    total_b = sum(b for _, _, b in rows.values())
    lines.append(f"| all kernels | {total_a:.2f} | {total_b:.2f} | {total_a / total_b:.2f}x |")
    top_other = ", ".join(f"{op} {ms:.2f}" for op, ms in sorted(int8_other.items(), key=lambda kv: -kv[1])[:5])
    return lines + ["", f"int8 other ops (ms): {top_other}", ""]


# --- report ------------------------------------------------------------------------------------


def accuracy_cells(candidate: Candidate, reference: Candidate) -> list[str]:
    cells = []
    for label, outputs in candidate.outputs.items():
        ref = reference.outputs[label]
        if ref.labels is not None:
            correct = round(topk_accuracy(outputs.values, ref.labels) * len(ref))
            cells.append(f"{correct}/{len(ref)}")
        cells.append(f"{top1_agreement(outputs.values, ref.values):.3f}")
        cells.append(f"{sqnr_db(outputs.values, ref.values):.1f}")
    return cells


def accuracy_headers(reference: Candidate) -> list[str]:
    headers = []
    for label, ref in reference.outputs.items():
        headers += ([f"top-1 ({label})"] if ref.labels is not None else [])
        headers += [f"agree ({label})", f"SQNR dB ({label})"]
    return headers


def summarise(work: Workload, candidates: list[Candidate], results: dict) -> list[str]:
    headers = ["candidate", "img/s", "vs fp32 median (p10-p90)", "size MB", "build s", *accuracy_headers(candidates[0])]
    lines = [f"### {work.name}", "", "| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for candidate in candidates:
        result = results[candidate.name]
        spread = f"{1 / result.ratio_p90:.2f}-{1 / result.ratio_p10:.2f}"
        name = f"{candidate.name} (chosen)" if candidate.chosen else candidate.name
        cells = [name, f"{result.throughput_per_s:.1f}", f"{result.speedup:.2f}x ({spread})",
                 f"{candidate.size_bytes / 1e6:.1f}", f"{candidate.build_s:.2f}", *accuracy_cells(candidate, candidates[0])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def run_model(name: str, loader, folder: Path, args) -> tuple[list[str], dict]:
    print(f"{name}: loading", flush=True)
    started = time.perf_counter()
    work = loader()
    print(f"  loaded in {time.perf_counter() - started:.1f} s ({len(work.model.proto.graph.node)} nodes)", flush=True)
    candidates = build_candidates(work, folder / "calibration")
    if not args.no_peer:
        candidates.append(ort_quantizer_peer(work, folder))
    backends = score(candidates, work)
    chosen = mark_chosen(candidates)
    results = time_candidates(backends, work, args.rounds, args.reps)
    lines = summarise(work, candidates, results)
    print("\n".join(lines), flush=True)
    print("  profiling kernels by layer kind", flush=True)
    profile = time_by_layer_kind(work, candidates[0], chosen)
    heading = (f"Kernel time per batch by layer kind ({name}, {chosen.name}, ONNX Runtime profiler, "
               "5 runs, not interleaved):")
    lines += [heading, ""] + profile
    print("\n".join(profile), flush=True)
    fused = {c.name: fused_ops(c, folder) for c in candidates if c.chosen or c.name.endswith("peer)")}
    return lines, fused


def environment() -> list[str]:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()

    def field_(key: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith(key)), "?")

    flags = field_("flags").split()
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    return [f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            (f"- CPU: {field_('model name')} (family/model {field_('cpu family')}/{field_('model')}), "
             f"{os.cpu_count()} logical cores, AVX-512 VNNI: {'yes' if vnni else 'no'}, "
             f"AMX-INT8: {'yes' if 'amx_int8' in flags else 'no'}"),
            (f"- python {platform.python_version()}, onnxruntime {ort.__version__}, onnx {onnx.__version__}, "
             f"torch {torch.__version__}, numpy {np.__version__}"),
            (f"- batch {BATCH}, OrtCpuBackend(threads={THREADS}): inter-op 1, ORT_ENABLE_ALL, "
             f"CPUExecutionProvider, disabled optimizers {DISABLED_OPTIMIZERS}, thread-pool spinning at ORT's default (on), 50 ms settle pause between candidates")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3, help="timed calls per candidate per round (median kept)")
    parser.add_argument("--models", default="resnet50,effnet-lite0")
    parser.add_argument("--no-peer", action="store_true", help="skip ONNX Runtime's own quantizer as a peer")
    parser.add_argument("--write", type=Path, help="replace this bench's block in a markdown file (docs/perf.md)")
    args = parser.parse_args()
    loaders = {"resnet50": resnet50, "effnet-lite0": effnet_lite0}
    started = time.perf_counter()
    sections, fusion = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            lines, fused = run_model(name, loaders[name], Path(tmp), args)
            sections += lines
            fusion.update({f"{name} {candidate}": counts for candidate, counts in fused.items()})
    for name, counts in fusion.items():
        print(f"{name} after ORT optimisation: {counts}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.write:
        write_markdown(args.write, sections, fusion, args)


def write_markdown(path: Path, sections: list[str], fusion: dict, args) -> None:
    command = f"PYTHONPATH=src python bench/cpu_precisions.py --rounds {args.rounds} --reps {args.reps}"
    if args.models != "resnet50,effnet-lite0":
        command += f" --models {args.models}"
    fused = [f"- {name}: " + ", ".join(f"{op} {n}" for op, n in counts.items()) for name, counts in fusion.items()]
    lines = (["## fp32 / fp16 / int8 on ONNX Runtime CPU: ResNet-50 and EfficientNet-Lite0", "",
              (f"Produced by `{command} --write {path}` (this block only; the rest of the file is kept). "
               "The machine's speed drifts (up to ~3x within minutes): compare the ratios, which are "
               "computed per round against the same round's fp32."), ""]
             + environment() + [""] + sections
             + ["Ops in the int8 artifacts after ONNX Runtime's optimisation (what actually runs):", ""]
             + fused + [""] + NOTES)
    write_marked_block(path, MARKER, lines, title=FILE_TITLE)
    print(f"wrote the {MARKER} block of {path}")


NOTES = [
    "### Notes", "",
    ("- Every candidate runs in `trimtab.backends.ort_cpu.OrtCpuBackend` and is timed by "
     "`trimtab.measure.bench_interleaved`, as in `trimtab tune`. Thread-pool spinning stays at ONNX "
     "Runtime's default (on, as deployed); because all candidates share one process, the loop pauses "
     "50 ms and makes one untimed call before each candidate's turn, so an idle session's spinning "
     "threads do not steal the two cores (EfficientNet-Lite0 int8/fp32: 1.92-1.99x spinning off, "
     "2.04x spinning without the pause, 2.10-2.15x with it). "
     "ONNX Runtime's WeightBiasQuantization is off so that a node the plan keeps float stays float."),
    ("- Our int8 rows: `trimtab.calibrate.calibrate` (histograms once, then entropy or mse ranges) + "
     "`build_int8(..., \"ort-cpu\", skip_tensors=sentinel tensors)`. Both methods build the same "
     "graph (only scales differ), so their speeds differ by noise only; `(chosen)` marks the one tune "
     "would choose on accuracy (smallest drop on the first evaluation set, then agreement and SQNR), "
     "which is the one profiled. `build s` of the first method includes the one histogram pass."),
    ("- `int8 (ORT quantizer, peer)` is ONNX Runtime's own `quantize_static` (QDQ, per-channel, "
     "U8S8, MinMax) on the same calibration data: the placement to match or beat. Its `build s` "
     "includes its calibration."),
    ("- fp16 on this CPU: ONNX Runtime has no x86 fp16 Conv/Gemm kernels and inserts Casts back to "
     "fp32 around them. On ResNet-50 the Casts cancel out and the graph runs as fp32 (1.0x); on "
     "EfficientNet-Lite0 Clip has an fp16 kernel, so casts and NCHWc reorders stay around every "
     "Clip (about 0.6x). fp16 halves the size, not the time, here."),
    ("- Where int8 pays (layer-kind tables): pointwise and spatial convs 3-4.5x, depthwise convs only "
     "1.3-1.7x and EfficientNet's 3-channel 3x3 stem conv 0.7-0.9x (ONNX Runtime's int8 depthwise/stem "
     "kernels are not much faster than its fp32 NCHWc ones), and int8 adds QuantizeLinear/Transpose/"
     "QLinearAdd work. That is why EfficientNet-Lite0 (depthwise-heavy) gains ~2x where ResNet-50 "
     "gains ~3x+."),
    ("- Placement experiments that did not pay (run by hand with min/max ranges, same interleaved "
     "method): stem conv kept fp32 via the plan, 1.89x vs 1.94x all-int8 (the Q of its 4x larger "
     "output costs more than it saves); depthwise weights per-tensor instead of per-channel, 2.02x vs "
     "1.88x but logits SQNR fell from 19.2 to 8.1 dB (dead BN-folded channels), so rejected."),
    ("- Data. ResNet-50 has random weights (BN statistics from random images): it is calibrated on 32 "
     "standard-normal images (seed 1) and scored on 16 others (seed 2), so only agreement with fp32 and "
     "SQNR mean anything. EfficientNet-Lite0 uses `example:effnet-lite0`'s own data: calibration_data() "
     "(96 crops of photos bundled with scikit-image/scikit-learn/matplotlib), top-1 on validation_data() "
     "(foolbox's 20 labelled ImageNet photos, the first 8 of which are the timed batch) and agreement/SQNR "
     "on agreement_data() (128 other crops)."),
    "",
]


if __name__ == "__main__":
    main()
