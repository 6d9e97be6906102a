"""The gpu engine's 8-bit GEMM layers against fp16 on BERT-base's linear layers, one GPU run.

Shapes: 16,384 tokens (batch 128 x sequence 128) through BERT-base's four linear layers (QKV
768->2304, attention output 768->768, FFN up 768->3072 with GELU, FFN down 3072->768). Per shape:
fp16 `F.linear` (+ GELU) as the engine's fp16 path runs it, trimtab's Triton int8 and fp8 kernels
(scale + bias + activation fused; fp16 out, and int8/fp8 out re-quantized for the next layer),
cuBLASLt fp8 `torch._scaled_mm` and int8 `torch._int_mm` for reference, and the one-pass
activation quantizer. Correctness: each Triton result against the float64 reference of the same
quantized operands. Timing: each variant captured as a CUDA graph of 20 calls, graphs replayed in
interleaved rounds, median (GPU time alone, as the engine sees it).

Run: PYTHONPATH=src python bench/lowbit_gemm.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _support import cuda_graph_interleaved, gpu_environment
from trimtab.backends.gpu import lowbit

SHAPES = [("qkv", 768, 2304, None), ("attn_out", 768, 768, None), ("ffn_up", 768, 3072, "gelu"), ("ffn_down", 3072, 768, None)]


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    noise = (out - ref).pow(2).mean()
    return float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).mean() / noise))


def bench_shape(name: str, k: int, n: int, act, m: int, rows: list) -> None:
    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16) / k ** 0.5
    bias = torch.randn(n, device="cuda", dtype=torch.float16) * 0.1
    x_scale = float(x.abs().max()) / 127
    w_scale = w.float().abs().amax(dim=1) / 127
    x8 = lowbit.quantize(x, x_scale, torch.int8)
    w8 = lowbit.quantize_reference(w.float() / w_scale[:, None], 1.0, torch.int8).contiguous()
    col8 = (x_scale * w_scale).float().contiguous()
    fx_scale = float(x.abs().max()) / lowbit.FP8_MAX
    fw_scale = w.float().abs().amax(dim=1) / lowbit.FP8_MAX
    xf = lowbit.quantize(x, fx_scale, lowbit.FP8)
    wf = (w.float() / fw_scale[:, None]).to(lowbit.FP8).contiguous()
    colf = (fx_scale * fw_scale).float().contiguous()
    bias32 = bias.float()
    out_scale = 0.05

    checks = {
        "int8 fp16-out": sqnr_db(lowbit.qgemm(x8, w8, col8, bias32, act, torch.float16),
                                  lowbit.qgemm_reference(x8, w8, col8, bias32, act, torch.float32)),
        "int8 tma fp16-out": sqnr_db(lowbit.qgemm(x8, w8, col8, bias32, act, torch.float16, tma=True),
                                      lowbit.qgemm_reference(x8, w8, col8, bias32, act, torch.float32)),
        "fp8 tma fp16-out": sqnr_db(lowbit.qgemm(xf, wf, colf, bias32, act, torch.float16, tma=True),
                                     lowbit.qgemm_reference(xf, wf, colf, bias32, act, torch.float32)),
        "int8 tma requant max diff": float((lowbit.qgemm(x8, w8, col8, bias32, act, torch.int8, out_scale, tma=True).int()
                                            - lowbit.qgemm_reference(x8, w8, col8, bias32, act, torch.int8, out_scale).int()).abs().max()),
    }

    def fp16():
        y = F.linear(x, w, bias)
        return F.gelu(y) if act else y

    # the engine's epilogue for each layer: Q/K/V and the two projections write fp16, the FFN
    # up-projection + GELU writes 8-bit for the down-projection
    requant = out_scale if act else None
    out8, outf = (torch.int8, lowbit.FP8) if act else (torch.float16, torch.float16)
    ones = torch.ones(n, device="cuda")
    variants = {
        "fp16 F.linear": fp16,
        "int8 triton": lambda: lowbit.qgemm(x8, w8, col8, bias32, act, out8, requant),
        "int8 triton tma": lambda: lowbit.qgemm(x8, w8, col8, bias32, act, out8, requant, tma=True),
        "fp8 triton": lambda: lowbit.qgemm(xf, wf, colf, bias32, act, outf, requant),
        "fp8 triton tma": lambda: lowbit.qgemm(xf, wf, colf, bias32, act, outf, requant, tma=True),
        "quantize int8": lambda: lowbit.quantize(x, x_scale, torch.int8),
        "fake-quantize int8": lambda: lowbit.fake_quantize(x, x_scale, torch.int8),
    }
    if act:
        variants["fp16 triton (GELU fused)"] = lambda: lowbit.qgemm(x, w, ones, bias, act, torch.float16)
        variants["fp16 F.linear, no act"] = lambda: F.linear(x, w, bias)
    one = torch.ones((), device="cuda")
    try:
        torch._scaled_mm(xf, wf.t(), scale_a=one, scale_b=one, bias=bias, out_dtype=torch.float16)
        variants["fp8 _scaled_mm"] = lambda: torch._scaled_mm(xf, wf.t(), scale_a=one, scale_b=one, bias=bias,
                                                              out_dtype=torch.float16)
    except Exception as exc:  # noqa: BLE001
        rows.append((name, "fp8 _scaled_mm", "failed", repr(exc)[:120]))
    try:
        torch._int_mm(x8, w8.t())
        variants["int8 _int_mm (int32 out)"] = lambda: torch._int_mm(x8, w8.t())
    except Exception as exc:  # noqa: BLE001
        rows.append((name, "int8 _int_mm", "failed", repr(exc)[:120]))
    times = cuda_graph_interleaved(variants, rounds=9, iters=20)
    flops = 2 * m * n * k
    for variant, ms in times.items():
        rate = "" if "quantize" in variant else round(flops / ms / 1e9, 1)
        rows.append((name, variant, round(ms * 1000, 1), rate, round(times["fp16 F.linear"] / ms, 2)))
    rows.append((name, "checks", json.dumps({k: round(v, 2) for k, v in checks.items()})))


def bench_layer_norm(m: int, rows: list, n: int = 768) -> None:
    """BERT's add + LayerNorm (+ the int8 quantizer of its output): PyTorch ops against one Triton pass."""
    from trimtab.backends.gpu.norm_triton import layer_norm

    x, z = (torch.randn(m, n, device="cuda", dtype=torch.float16) for _ in range(2))
    w, b = torch.randn(n, device="cuda", dtype=torch.float16), torch.randn(n, device="cuda", dtype=torch.float16)
    variants = {
        "torch add + layer_norm": lambda: F.layer_norm(x + z, (n,), w, b, 1e-12),
        "torch add + layer_norm + quantize": lambda: lowbit.quantize(F.layer_norm(x + z, (n,), w, b, 1e-12), 0.03, torch.int8),
        "triton add+norm": lambda: layer_norm(x, w, b, 1e-12, residual=z),
        "triton add+norm+quantize": lambda: layer_norm(x, w, b, 1e-12, residual=z, quant=(0.03, torch.int8)),
    }
    times = cuda_graph_interleaved(variants, rounds=9, iters=20)
    for variant, ms in times.items():
        rows.append(("layer_norm", variant, round(ms * 1000, 1), "", round(times["torch add + layer_norm"] / ms, 2)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args()
    env = gpu_environment()
    print(json.dumps(env), flush=True)
    rows: list = []
    for name, k, n, act in SHAPES:
        t0 = time.perf_counter()
        bench_shape(name, k, n, act, args.tokens, rows)
        print(f"# {name} {time.perf_counter() - t0:.0f} s", flush=True)
    bench_layer_norm(args.tokens, rows)
    kernels = lowbit._triton_kernels()
    best = {str(key): str(cfg) for key, cfg in kernels["qgemm"].cache.items()}
    lines = ["| layer | variant | us | TFLOP/s | x fp16 |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    table = "\n".join(lines)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lowbit_gemm.json").write_text(json.dumps({"environment": env, "rows": rows, "best_configs": best}, indent=1))
    print(json.dumps(best, indent=0)[:1500])
    print(table)


if __name__ == "__main__":
    main()
