"""trimtab's gpu engine against PyTorch on one GPU, side by side in one run.

Models (random weights, exported to ONNX here with torch.onnx.export):
  resnet50  torchvision architecture, 224x224; large batch 256
  bert      transformers BertModel (BERT-base config), sequence 128; large batch 128
  effnet    EfficientNet-Lite0 from trimtab's example cache, if its ONNX is given (--effnet PATH);
            no PyTorch baseline (its package is not on the GPU machine)

Variants: PyTorch eager fp32 (TF32 off), eager fp16 (channels_last for CNNs), torch.compile
default mode fp16 (large batch only: one compile per model), trimtab gpu fp16 (the fp16 artifact
from trimtab.build.build_fp16, CUDA graph); at the large batch also trimtab int8 (Q/DQ, fp16 elsewhere)
and fp8 (Q/DQ), calibrated on the GPU (minmax, 16 random inputs), checked by cosine against
trimtab's fp16 (CNNs) or fp32 (BERT) engine. Throughput at the large batch, latency at batch 1,
engine build time cold and from the engine cache, and correctness (relative error of the first
output vs eager fp32). Timing: CUDA events after warm-up, variants interleaved round-robin,
median over rounds. Run: PYTHONPATH=src python bench/gpu_engine.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _support import cuda_interleaved

ROUNDS, ITERS = 7, 10


def interleaved(variants: dict) -> dict[str, float]:
    return cuda_interleaved(variants, rounds=ROUNDS, iters=ITERS)


def rel(a, b) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max())


def export(module, args: tuple, names: list[str], path: Path, dynamic: dict) -> Path:
    torch.onnx.export(module, args, str(path), input_names=names, output_names=["out"] if len(names) == 1 else None,
                      dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return path


def trimtab_engine(onnx_path: Path, cache_dir: Path, shapes: dict, precision: str, calib=None):
    """(backend, engine, cold build s, cached build s, notes) for the fp16 (or fp32, or int8 Q/DQ in
    the tensorrt flavour with fp32 or fp16 elsewhere, or fp8 Q/DQ; minmax ranges from `calib`)
    artifact."""
    from trimtab.backends.gpu import GpuBackend
    from trimtab.build import build_fp8, build_fp16, build_int8
    from trimtab.load import load_model

    start = time.perf_counter()
    model = load_model(onnx_path)
    if precision.startswith(("int8", "fp8")):
        from trimtab.calibrate import calibrate

        calibration = calibrate(model, calib, "minmax", batch_size=8, target="gpu")
        skip = set(calibration.float_tensors)
        if precision.startswith("fp8"):
            proto = build_fp8(model, calibration.ranges, method_name="minmax", skip_tensors=skip,
                              unquantized="fp32" if precision == "fp8-fp32" else "fp16").proto
        else:
            proto = build_int8(model, calibration.ranges, "tensorrt", method_name="minmax", skip_tensors=skip,
                               unquantized="fp16" if precision == "int8-fp16" else "fp32").proto
    else:
        proto = build_fp16(model).proto if precision == "fp16" else model.proto
    artifact_s = time.perf_counter() - start
    with GpuBackend(proto, cache_dir=cache_dir) as cold:
        cold_info = cold.build(shapes)
    backend = GpuBackend(proto, cache_dir=cache_dir).prepare()
    cached_info = backend.build(shapes)
    assert cached_info.from_cache and not cold_info.from_cache
    return backend, backend.engine(shapes), cold_info.seconds, cached_info.seconds, cold_info.notes, artifact_s


def bench_resnet(work: Path, rows: list, large: int = 256) -> None:
    import torchvision

    net = torchvision.models.resnet50().eval().cuda()
    path = export(net.cpu(), (torch.randn(1, 3, 224, 224),), ["input"], work / "resnet50.onnx", {"input": {0: "n"}})
    net = net.cuda()
    bench_cnn("resnet50", net, path, work, rows, large)


def bench_cnn(name: str, net, path: Path, work: Path, rows: list, large: int) -> None:
    half = None
    if net is not None:
        half = torch.nn.Module.half(__import__("copy").deepcopy(net)).to(memory_format=torch.channels_last)
    for batch in (large, 1):
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        x_half = x.half().contiguous(memory_format=torch.channels_last)
        backend, engine, cold, cached, notes, artifact_s = trimtab_engine(path, work / "cache", {"input": x.shape}, "fp16")
        feeds = {"input": x}
        variants, checks = {}, {}
        with torch.inference_mode():
            ref = None
            if net is not None:
                with torch.backends.cudnn.flags(allow_tf32=False):
                    ref = net(x)
                variants["eager fp32"] = lambda: _no_tf32(net, x)
                variants["eager fp16 CL"] = lambda: half(x_half)
                checks["eager fp16 CL"] = rel(half(x_half), ref)
                if batch == large:
                    t0 = time.perf_counter()
                    compiled = torch.compile(half)
                    compiled(x_half)
                    torch.cuda.synchronize()
                    rows.append((name, batch, "torch.compile build s", round(time.perf_counter() - t0, 1)))
                    variants["compile fp16 CL"] = lambda: compiled(x_half)
                    checks["compile fp16 CL"] = rel(compiled(x_half), ref)
            out = engine.run(feeds)
            first = out[engine.plan.outputs[0]]
            if ref is not None:
                checks["trimtab fp16"] = rel(first, ref)
            variants["trimtab fp16"] = lambda: engine.run(feeds)
            lowbit = {}
            if batch == large:  # int8 (fp16 elsewhere) and fp8, calibrated on 16 random images
                from trimtab.data import Dataset
                from trimtab.data.dataset import Sample

                rng = np.random.default_rng(0)
                calib = Dataset([Sample({"input": rng.standard_normal((3, 224, 224)).astype(np.float32)}, source=f"r{i}")
                                 for i in range(16)], name="random-images")
                reference = first.float().clone()
                lowbit = _lowbit_variants(name, path, work, {"input": x.shape}, calib, feeds, variants, checks, rows,
                                          lambda out: cosine(out, reference))
            times = interleaved(variants)
        _record(rows, name, batch, times, checks, cold, cached, notes, artifact_s)
        _record_lowbit(rows, name, batch, lowbit)
        backend.close()


def _lowbit_variants(name, path, work, shapes, calib, feeds, variants, checks, rows, check) -> dict:
    """Add the int8 (fp16 elsewhere) and fp8 engines to `variants`; a build that fails is a row, not
    the end of the run. Returns label -> trimtab_engine's tuple."""
    built = {}
    for label, precision in (("trimtab int8 (Q/DQ, fp16 elsewhere)", "int8-fp16"), ("trimtab fp8 (Q/DQ)", "fp8")):
        try:
            built[label] = trimtab_engine(path, work / "cache", shapes, precision, calib)
        except Exception as exc:  # noqa: BLE001
            rows.append((name, "-", f"{label} FAILED", repr(exc)[:300]))
            continue
        engine = built[label][1]
        checks[label] = check(engine.run(feeds)[engine.plan.outputs[0]])
        variants[label] = (lambda e: lambda: e.run(feeds))(engine)
    return built


def _record_lowbit(rows, name, batch, built: dict) -> None:
    for label, (backend, engine, cold, cached, notes, artifact_s) in built.items():
        ran = [v["ran"] for v in notes.get("layer_precisions", {}).values()]
        rows.append((name, batch, f"{label} build s (artifact incl. calibration / cold / cached)",
                     f"{artifact_s:.1f} / {cold:.1f} / {cached:.2f}", json.dumps(notes.get("fusions")), notes.get("steps")))
        rows.append((name, batch, f"{label} layers ran", json.dumps({p: ran.count(p) for p in sorted(set(ran))}),
                     json.dumps(notes.get("runner")), None))
        _record_choices(rows, name, batch, label, notes)
        backend.close()


def cosine(out, ref) -> float:
    """Cosine between two outputs, flattened (the int8/fp8 check against trimtab's fp16 engine)."""
    out, ref = out.detach().double().reshape(-1), ref.detach().double().reshape(-1)
    return float(out @ ref / (out.norm() * ref.norm()))


def _no_tf32(net, x):
    with torch.backends.cudnn.flags(allow_tf32=False):
        return net(x)


def bert_onnx(work: Path, seq: int = 128):
    """(eager BertModel, its ONNX export, 16 random calibration sequences)."""
    from transformers import BertConfig, BertModel

    from trimtab.data import Dataset
    from trimtab.data.dataset import Sample

    torch.manual_seed(0)
    net = BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False).eval()
    ids = torch.randint(0, 30000, (2, seq))
    mask = torch.ones(2, seq, dtype=torch.int64)
    mask[1, seq - 16:] = 0  # the trace must see padding, or the export drops the mask path
    path = export(_Encoder(net), (ids, mask), ["input_ids", "attention_mask"], work / "bert.onnx",
                  {"input_ids": {0: "n"}, "attention_mask": {0: "n"}})
    rng = np.random.default_rng(0)
    calib = Dataset([Sample({"input_ids": rng.integers(1000, 30000, seq).astype(np.int64),
                             "attention_mask": np.ones(seq, np.int64)}, source=f"r{i}") for i in range(16)], name="rand")
    return net, path, calib


def bench_bert(work: Path, rows: list, large: int = 128, seq: int = 128, references=None) -> None:
    net, path, calib = bert_onnx(work, seq)
    net = net.cuda()
    half = __import__("copy").deepcopy(net).half()
    for batch in (large, 1):
        ids = torch.randint(0, 30000, (batch, seq), device="cuda")
        mask = torch.ones(batch, seq, dtype=torch.int64, device="cuda")
        mask[batch // 2:, seq - 16:] = 0  # some padding
        shapes = {"input_ids": ids.shape, "attention_mask": mask.shape}
        backend, engine, cold, cached, notes, artifact_s = trimtab_engine(path, work / "cache", shapes, "fp16")
        feeds = {"input_ids": ids, "attention_mask": mask}
        variants, checks = {}, {}
        with torch.inference_mode():
            ref = net(input_ids=ids, attention_mask=mask).last_hidden_state
            variants["eager fp32"] = lambda: net(input_ids=ids, attention_mask=mask)
            variants["eager fp16"] = lambda: half(input_ids=ids, attention_mask=mask)
            checks["eager fp16"] = rel(half(input_ids=ids, attention_mask=mask).last_hidden_state, ref)
            if batch == large:
                t0 = time.perf_counter()
                compiled = torch.compile(half)
                compiled(input_ids=ids, attention_mask=mask)
                torch.cuda.synchronize()
                rows.append(("bert", batch, "torch.compile build s", round(time.perf_counter() - t0, 1)))
                variants["compile fp16"] = lambda: compiled(input_ids=ids, attention_mask=mask)
                checks["compile fp16"] = rel(compiled(input_ids=ids, attention_mask=mask).last_hidden_state, ref)
            # reference for trimtab: its fp32 engine on the same ONNX file (TF32 off; conformance-tested
            # against ONNX Runtime); the exported graph itself differs from eager BertModel (cosine ~0.85
            # on a random-weight model, seen on CPU here with ONNX Runtime too), so eager is not the yardstick
            b32, e32 = trimtab_engine(path, work / "cache", shapes, "fp32")[:2]
            ref32 = e32.run(feeds)[e32.plan.outputs[0]].clone()
            b32.close()
            out = engine.run(feeds)
            checks["trimtab fp16"] = token_cosine(out[engine.plan.outputs[0]], ref32, mask)
            checks["eager fp16"] = token_cosine(half(input_ids=ids, attention_mask=mask).last_hidden_state, ref, mask)
            variants["trimtab fp16"] = lambda: engine.run(feeds)
            lowbit = {}
            if batch == large:
                lowbit = _lowbit_variants("bert", path, work, shapes, calib, feeds, variants, checks, rows,
                                          lambda out: token_cosine(out, ref32, mask))
            times = interleaved(variants)
        _record(rows, "bert", batch, times, checks, cold, cached, notes, artifact_s)
        for label, built in lowbit.items():
            rows.append(("bert", batch, f"{label} layer tactic ms", json.dumps(
                {name: v["ms"] for name, v in list(built[4].get("layer_precisions", {}).items())[:8]})[:900], None, None))
        _record_lowbit(rows, "bert", batch, lowbit)
        if batch == large:
            rows += qdq_reference_checks(path, work, calib, seq, labels=REFERENCE_LABELS if references is None else references)
        backend.close()


REFERENCE_LABELS = ("int8", "int8-fp16", "fp8", "fp8-fp32", "int8-fp16 exact", "fp8 exact")


def qdq_reference_checks(path: Path, work: Path, calib, seq: int, batch: int = 8, labels=REFERENCE_LABELS) -> list:
    """The issue's int8 check at a small batch: trimtab's int8 engines (real int8 GEMMs) against
    ONNX Runtime CPU running the same Q/DQ file: output SQNR (dB) and the smallest token cosine."""
    from trimtab.backends.ort_cpu import OrtCpuBackend
    from trimtab.measure.metrics import sqnr_db

    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(1000, 30000, (batch, seq)).astype(np.int64),
             "attention_mask": np.ones((batch, seq), np.int64)}
    feeds["attention_mask"][batch // 2:, seq - 16:] = 0
    shapes = {k: v.shape for k, v in feeds.items()}
    rows = []
    import os

    for label in labels:
        flavour, exact = label.split(" ")[0], label.endswith("exact")
        os.environ["TRIMTAB_GPU_EXACT"] = "1" if exact else "0"  # exact: IEEE division, erf-GELU
        try:
            backend, engine = trimtab_engine(path, work / f"cache-{'exact' if exact else 'fast'}", shapes, flavour, calib)[:2]
            got = backend.infer(feeds)[backend.output_names[0]]
            with OrtCpuBackend(backend._proto, threads=8) as ort:
                want = ort.infer(feeds)[ort.output_names[0]]
            mask = torch.from_numpy(feeds["attention_mask"])
            cos = token_cosine(torch.from_numpy(got), torch.from_numpy(want), mask)
            rows.append(("bert", batch, f"trimtab {label} vs ONNX Runtime CPU on the same Q/DQ file",
                         f"SQNR {sqnr_db(got, want):.1f} dB", f"min token cos {cos:.5f}", None))
            backend.close()
        except Exception as exc:  # noqa: BLE001  (a reference that cannot run is reported, not fatal)
            rows.append(("bert", batch, f"trimtab {label} vs ONNX Runtime CPU", "failed", repr(exc)[:400], None))
    os.environ.pop("TRIMTAB_GPU_EXACT", None)
    return rows


def token_cosine(out, ref, mask) -> float:
    """The smallest cosine between candidate and eager fp32 token states over the unpadded tokens
    (max-abs relative error is dominated by padded rows on a random-weight encoder)."""
    out, ref = out.detach().float(), ref.detach().float()
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)[mask.bool()]
    return float(cos.min())


class _Encoder(torch.nn.Module):
    """BertModel with positional inputs and one output, for the exporter."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids, attention_mask):
        return self.net(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _record(rows, name, batch, times, checks, cold, cached, notes, artifact_s):
    for variant, ms in times.items():
        check = checks.get(variant)
        shown = None if check is None else (f"cos {check:.5f}" if 0.5 < check <= 1.0 else f"{check:.1e}")
        rows.append((name, batch, variant, round(ms, 3), round(batch * 1000 / ms, 1), shown))
    rows.append((name, batch, "trimtab build s (fp16 artifact / cold engine / cached engine)",
                 f"{artifact_s:.1f} / {cold:.1f} / {cached:.2f}", json.dumps(notes.get("fusions")), notes.get("steps")))
    rows.append((name, batch, "trimtab fp16 runner (timed at build)", json.dumps(notes.get("runner")), None, None))
    _record_choices(rows, name, batch, "trimtab fp16", notes)


def _record_choices(rows, name, batch, label, notes) -> None:
    """Which attention kernel the engine kept (Triton or SDPA), with one step's timings."""
    choices = notes.get("kernel_choices") or {}
    if choices:
        ran = [v["ran"] for v in choices.values()]
        rows.append((name, batch, f"{label} attention kernels", json.dumps({k: ran.count(k) for k in sorted(set(ran))}),
                     json.dumps(next(iter(choices.values()))["ms"]), None))


def environment() -> dict:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    import triton

    return {"date": time.strftime("%Y-%m-%d"), "gpu": smi, "torch": torch.__version__, "triton": triton.__version__,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--models", default="resnet50,bert,effnet")
    parser.add_argument("--effnet", type=Path, default=None, help="EfficientNet-Lite0 ONNX file (trimtab example cache)")
    parser.add_argument("--references", default=",".join(REFERENCE_LABELS),
                        help="BERT engines checked against ONNX Runtime CPU (comma-separated, or 'none'): "
                             "ONNX Runtime runs fp8 Q/DQ files slowly, so the full set takes minutes")
    args = parser.parse_args()
    rows: list = []
    env = environment()
    print(json.dumps(env), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            t0 = time.perf_counter()
            try:
                if model == "resnet50":
                    bench_resnet(work, rows)
                elif model == "bert":
                    bench_bert(work, rows, references=[r for r in args.references.split(",") if r in REFERENCE_LABELS])
                elif model == "effnet" and args.effnet and args.effnet.is_file():
                    bench_cnn("effnet-lite0", None, args.effnet, work, rows, 256)
            except Exception as exc:  # one model's failure must not lose the others' numbers
                import traceback

                traceback.print_exc()
                rows.append((model, "-", "FAILED", repr(exc)[:300]))
            print(f"# {model} done in {time.perf_counter() - t0:.0f} s", flush=True)
            table = _table(rows)
            if args.out:  # after every model: a run cut short keeps what it measured
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "gpu_engine.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
                (args.out / "gpu_engine.md").write_text(table + "\n")
    print(_table(rows))


def _table(rows: list) -> str:
    lines = ["| model | batch | variant | ms | items/s | rel. err vs eager fp32 (BERT: min token cosine; trimtab vs its fp32 engine) |", "| --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
