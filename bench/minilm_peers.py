"""MiniLM (all-MiniLM-L6-v2, `example:minilm`) on ONNX Runtime CPU: our int8 candidates vs peers.

One process, batch 8, 2 intra-op threads, every candidate an `OrtCpuBackend` (ORT_ENABLE_ALL,
WeightBiasQuantization off, thread-pool spinning off), timed interleaved by
`trimtab.measure.bench_interleaved` (order rotated each round; speed-up = median over rounds of
fp32 time / candidate time in the same round, spread = 10th-90th percentile of those ratios).

Candidates:
  fp32                 the prepared model
  int8-<method> (ours) trimtab.calibrate (100 Lee-corpus sentences) + build_int8(..., "ort-cpu",
                       skip_tensors=calibration.float_tensors)
  ORT quantize_dynamic onnxruntime.quantization.quantize_dynamic, default settings (QInt8 weights)
  NNCF transformer     nncf.quantize(onnx model, same 100 sentences one by one,
                       model_type=nncf.ModelType.TRANSFORMER); on failure the reason is recorded

Accuracy on the example's validation data (200 polarity sentences, batches of 8 padded to the
longest): cosine of each embedding to fp32's (mean, min); polarity probe accuracy (the example's
extra metric); padded vs unpadded = max |embedding(batch of 8, padded) - embedding(sentence alone)|
over all 200 sentences.

    PYTHONPATH=src python bench/minilm_peers.py [--rounds 20] [--methods minmax,mse] [--write docs/perf.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.build import build_int8
from trimtab.calibrate import calibrate
from trimtab.examples import get_example
from trimtab.examples.minilm import polarity_probe_accuracy
from trimtab.load import load_model
from trimtab.measure.bench import bench_interleaved

BATCH = 8
THREADS = 2
SECTION = "## MiniLM (all-MiniLM-L6-v2): int8 candidates vs peers"


@dataclass
class Candidate:
    name: str
    source: object  # onnx.ModelProto or a path
    size_bytes: int
    build_s: float
    cosine_mean: float = float("nan")
    cosine_min: float = float("nan")
    probe: float = float("nan")
    pad_diff: float = float("nan")
    note: str = ""


def embeddings(backend: OrtCpuBackend, dataset, padded: bool) -> np.ndarray:
    """Padded: the dataset's batches of 8 (padded to the longest); else one sentence at a time."""
    if padded:
        return np.concatenate([backend.infer(batch.inputs)["embedding"] for batch in dataset.batches(BATCH)])
    rows = [backend.infer({k: v[None] for k, v in sample.inputs.items()})["embedding"] for sample in dataset]
    return np.concatenate(rows)


def cosines(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    unit = lambda rows: rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)  # noqa: E731
    return np.sum(unit(candidate.astype(np.float64)) * unit(reference.astype(np.float64)), axis=1)


def ours(model, example, method: str) -> Candidate:
    start = time.perf_counter()
    calibration = calibrate(model, example.calibration_data(), method)
    artifact = build_int8(model, calibration.ranges, "ort-cpu", method_name=method,
                          skip_tensors=calibration.float_tensors)
    seconds = time.perf_counter() - start
    note = f"{len(artifact.notes['quantized'])} MatMuls int8, calibration {'cached' if calibration.from_cache else 'run'}"
    return Candidate(f"int8-{method} (ours)", artifact.proto, artifact.size_bytes(), seconds, note=note)


def ort_dynamic(model, folder: Path) -> Candidate:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = folder / "fp32.onnx", folder / "ort-dynamic.onnx"
    onnx.save(model.proto, str(source))
    start = time.perf_counter()
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return Candidate("ORT quantize_dynamic", str(target), target.stat().st_size, time.perf_counter() - start,
                     note="default settings: per-tensor int8 weights, dynamic uint8 activations")


def nncf_transformer(model, example, folder: Path) -> Candidate:
    start = time.perf_counter()
    try:
        import nncf

        samples = [sample.inputs for sample in example.calibration_data()]
        dataset = nncf.Dataset(samples, lambda inputs: {k: v[None] for k, v in inputs.items()})
        quantized = nncf.quantize(model.proto, dataset, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(samples))
    except Exception as exc:  # record why the peer failed, keep the others
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
        return Candidate("NNCF transformer", None, 0, time.perf_counter() - start, note=f"failed: {reason[:200]}")
    seconds = time.perf_counter() - start
    target = folder / "nncf.onnx"
    onnx.save(quantized, str(target))
    return Candidate("NNCF transformer", str(target), target.stat().st_size, seconds,
                     note="model_type=TRANSFORMER (SmoothQuant, sensitive ops float)")


def score(candidates: list[Candidate], validation, labels: np.ndarray) -> tuple[dict, dict]:
    backends = {}
    reference = None
    for candidate in candidates:
        if candidate.source is None:
            continue
        backend = OrtCpuBackend(candidate.source, threads=THREADS)
        backend.prepare()
        backends[candidate.name] = backend
        padded = embeddings(backend, validation, padded=True)
        alone = embeddings(backend, validation, padded=False)
        if reference is None:
            reference = padded
        values = cosines(padded, reference)
        candidate.cosine_mean, candidate.cosine_min = float(values.mean()), float(values.min())
        candidate.probe = polarity_probe_accuracy(padded, reference, labels)
        candidate.pad_diff = float(np.abs(padded - alone).max())
        print(f"  {candidate.name}: cosine {candidate.cosine_mean:.4f} (min {candidate.cosine_min:.4f}), "
              f"probe {candidate.probe:.3f}, padded vs unpadded {candidate.pad_diff:.2e}", flush=True)
    return backends, {}


def table(candidates: list[Candidate], results: dict) -> list[str]:
    lines = ["| candidate | cosine mean | cosine min | polarity probe | padded vs unpadded max diff "
             "| sent/s | vs fp32 median (p10-p90) | size MB | build s | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in candidates:
        result = results.get(c.name)
        if result is None:
            lines.append(f"| {c.name} | - | - | - | - | - | - | - | {c.build_s:.1f} | {c.note} |")
            continue
        speed = 1.0 / result.ratio_to_baseline
        spread = f"{1.0 / result.ratio_p90:.2f}-{1.0 / result.ratio_p10:.2f}"
        lines.append(
            f"| {c.name} | {c.cosine_mean:.4f} | {c.cosine_min:.4f} | {c.probe:.3f} | {c.pad_diff:.1e} "
            f"| {result.throughput_per_s:.1f} | {speed:.2f}x ({spread}) | {c.size_bytes / 1e6:.1f} "
            f"| {c.build_s:.1f} | {c.note} |")
    return lines


def environment() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    field = lambda key: next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith(key)), "?")  # noqa: E731,E741
    flags = field("flags").split()
    cores = sum(1 for line in cpuinfo if line.startswith("processor"))
    versions = ", ".join(f"{name} {_version(name)}" for name in ("onnxruntime", "onnx", "nncf", "numpy", "torch"))
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        (f"- CPU: {field('model name')} (family/model {field('cpu family')}/{field('model')}), {cores} logical "
         f"cores, AVX-512 VNNI: {'yes' if 'avx512_vnni' in flags else 'no'}, "
         f"AMX-INT8: {'yes' if 'amx_int8' in flags else 'no'}"),
        f"- python {platform.python_version()}, {versions}",
        (f"- batch {BATCH} (the first 8 validation sentences, padded to the longest), intra-op threads "
         f"{THREADS}, ORT_ENABLE_ALL, WeightBiasQuantization off, interleaved timing"),
    ]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def write_section(path: Path, lines: list[str]) -> None:
    """Replace (or append) the MiniLM section of `path`, keeping every other section."""
    from trimtab._io import atomic_write_text

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + text[end + 1:] if end >= 0 else text[:start]
    atomic_write_text(path, text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--methods", default="minmax,mse", help="calibration methods for our int8")
    parser.add_argument("--no-nncf", action="store_true")
    parser.add_argument("--write", type=Path, help="replace/append the MiniLM section of this markdown file")
    args = parser.parse_args()
    example, model = get_example("minilm"), load_model("example:minilm")
    validation = example.validation_data()
    labels = np.array([sample.label for sample in validation])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        candidates = [Candidate("fp32", model.proto, model.proto.ByteSize(), 0.0)]
        candidates += [ours(model, example, method) for method in args.methods.split(",")]
        candidates.append(ort_dynamic(model, folder))
        if not args.no_nncf:
            print("quantizing with NNCF", flush=True)
            candidates.append(nncf_transformer(model, example, folder))
        print("scoring", flush=True)
        backends, _ = score(candidates, validation, labels)
        feeds = next(iter(validation.batches(BATCH))).inputs
        print(f"timing {len(backends)} candidates, {args.rounds} rounds, sequence {feeds['input_ids'].shape[1]}",
              flush=True)
        results = bench_interleaved(backends, feeds, rounds=args.rounds, min_seconds=5.0)
        for backend in backends.values():
            backend.close()
    lines = [SECTION, "",
             (f"Produced by `PYTHONPATH=src python bench/minilm_peers.py --rounds {args.rounds} --methods "
              f"{args.methods} --write {args.write or 'docs/perf.md'}`. Speed-ups are per-round ratios "
              "against the same round's fp32 (the machine drifts; compare ratios)."), ""]
    lines += environment() + [""] + table(candidates, results) + [""]
    print("\n".join(lines))
    if args.write:
        write_section(args.write, lines)


if __name__ == "__main__":
    main()
