"""BERT-base's Q/K/V projection + attention: the fused kernel against the separate ones, one GPU run.

Shapes: batch 128 x sequence 128 tokens, hidden 768, 12 heads of 64, a padding mask on half the
sequences (the additive [B, 1, S, S] mask BERT's export builds). Per element type:
  separate  the engine's unfused path: the Q/K/V GEMM (`lowbit.qgemm`, fp16 out; fp16: cuBLAS
            `F.linear`) writes q, k, v; the attention kernel (`attention_triton`) reads them
  fused     `qkv_attention_triton.qkv_attention`: q, k, v never leave the chip (int8 on Hopper:
            the Triton or the warp-specialized Gluon kernel, whichever it timed faster; both are
            also timed alone, with the [B, 1, S, S] mask and with one row of keys a sequence)
The fused kernel's autotuner timings per config (tile depth, warps, stages, q and k merged into
one product or not) and each compiled variant's registers, spills and shared memory are printed.
Checks: fused output against the separate path's (int8/fp8: share of codes that differ, largest
difference in steps; fp16: largest difference relative to the largest value).
Timing: CUDA graphs of 20 calls, replayed in interleaved rounds, median (GPU time alone).

Run: PYTHONPATH=src:bench python bench/qkv_attention.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from _support import cuda_graph_interleaved, gpu_environment
from trimtab.backends.gpu import attention_triton, lowbit, qkv_attention_triton

B, S, K, H, D = 128, 128, 768, 12, 64
HIDDEN = H * D


def operands(element: torch.dtype):
    torch.manual_seed(0)
    x = torch.randn(B, S, K, device="cuda", dtype=torch.float16)
    w = torch.randn(3 * HIDDEN, K, device="cuda", dtype=torch.float16) / K ** 0.5 * 2
    bias = torch.randn(3 * HIDDEN, device="cuda", dtype=torch.float16) * 0.1
    mask = torch.zeros(B, 1, S, S, device="cuda", dtype=torch.float16)
    mask[B // 2:, :, :, S - 16:] = torch.finfo(torch.float16).min
    if element == torch.float16:
        return x, w, None, bias, mask
    top = 127 if element == torch.int8 else lowbit.FP8_MAX
    x_scale = float(x.abs().max()) / top
    w_scale = w.float().abs().amax(dim=1) / top
    xq = lowbit.quantize(x, x_scale, element)
    wq = lowbit.quantize_reference(w.float() / w_scale[:, None], 1.0, element).contiguous()
    return xq, wq, (x_scale * w_scale).float().contiguous(), bias, mask


def separate(x, w, col, bias, mask, out_q):
    if col is None:
        y = F.linear(x, w, bias)
    else:
        y = lowbit.qgemm(x, w, col, bias, None, torch.float16)
    q, k, v = (t.view(B, S, H, D).transpose(1, 2) for t in y.split(HIDDEN, dim=-1))
    return attention_triton.attention(q, k, v, mask, D ** -0.5, out_q)


def fused(x, w, col, bias, mask, out_q):
    return qkv_attention_triton.qkv_attention(x, w, col, bias, (0, HIDDEN, 2 * HIDDEN), H, mask, D ** -0.5,
                                              torch.float16, out_q)


def fused_triton(x, w, col, bias, mask, out_q):
    return qkv_attention_triton.qkv_attention(x, w, col, bias, (0, HIDDEN, 2 * HIDDEN), H, mask, D ** -0.5,
                                              torch.float16, out_q, async_int8=False)


def fused_gluon(x, w, col, bias, mask, out_q):
    """The warp-specialized int8 kernel alone (autotuned), as `qkv_attention` would launch it."""
    from trimtab.backends.gpu.lowbit import multiprocessors
    from trimtab.backends.gpu.qkv_attention_gluon import qkv_attention_pingpong

    m, strides = attention_triton.mask_operand(mask, x)
    out = torch.empty((B, S, H, D), dtype=out_q[1] if out_q else torch.float16, device=x.device)
    qkv_attention_pingpong(x, w, col, bias, (0, HIDDEN, 2 * HIDDEN), H, m, strides, D ** -0.5 * 1.4426950408889634,
                           out, out_q, multiprocessors(x.device))
    return out.permute(0, 2, 1, 3)


def row_mask(fn):
    """fn with BERT's padding mask as one row of keys a sequence ([B, 1, 1, S]), not [B, 1, S, S]."""
    return lambda x, w, col, bias, mask, out_q: fn(x, w, col, bias, mask[:, :, :1, :], out_q)


def tuning(name: str, kernel=None) -> list[str]:
    """The fused kernel's autotuner timings of its last tuning (us, median), best first."""
    timings = getattr(kernel or qkv_attention_triton._qkv_attention, "configs_timings", None) or {}
    lines = []
    for config, t in sorted(timings.items(), key=lambda kv: kv[1][0] if isinstance(kv[1], list) else kv[1]):
        ms = t[0] if isinstance(t, list) else t
        lines.append(f"{name} config {config.kwargs} warps {config.num_warps} stages {config.num_stages}: {ms * 1000:.1f} us")
    return lines


def compiled_variants() -> list[str]:
    lines = []
    for kernel_cache, *_ in qkv_attention_triton._qkv_attention.fn.device_caches.values():
        for kernel in kernel_cache.values():
            try:
                kernel._init_handles()
                m = kernel.metadata
                lines.append(f"compiled: warps {m.num_warps} stages {m.num_stages} shared {m.shared} B "
                             f"regs {kernel.n_regs} spills {kernel.n_spills}")
            except Exception as exc:  # noqa: BLE001  (diagnostics only)
                lines.append(f"compiled: {type(exc).__name__}")
    return lines


def compare(got: torch.Tensor, want: torch.Tensor, element) -> str:
    if element == torch.float16:
        return f"max rel diff {float((got.float() - want.float()).abs().max() / want.float().abs().max()):.2e}"
    if element == torch.int8:
        diff = (got.int() - want.int()).abs()
        return f"codes differing {float((diff > 0).float().mean()):.2e}, max {int(diff.max())} step"
    diff = got.float() != want.float()
    return f"codes differing {float(diff.float().mean()):.2e}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants, checks, tuned = {}, {}, []
    with torch.inference_mode():
        for name, element in (("int8", torch.int8), ("fp8", lowbit.FP8), ("fp16", torch.float16)):
            x, w, col, bias, mask = operands(element)
            probe = separate(x, w, col, bias, mask, None)
            out_q = None if element == torch.float16 else (float(probe.abs().max()) / (127 if element == torch.int8 else 448), element)
            want = separate(x, w, col, bias, mask, out_q)
            labelled = [("separate", separate), ("fused", fused)]
            if element == torch.int8:
                labelled += [("fused triton", fused_triton), ("fused gluon", fused_gluon),
                             ("fused triton, row mask", row_mask(fused_triton)),
                             ("fused gluon, row mask", row_mask(fused_gluon))]
            for label, fn in labelled:
                key = f"{name} {label}"
                try:
                    got = fn(x, w, col, bias, mask, out_q)
                    torch.cuda.synchronize()
                except Exception as exc:  # noqa: BLE001  (report, time the others)
                    checks[key] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                    continue
                checks[key] = compare(got, want, element)
                if label == "fused":
                    tuned += tuning(name)
                if "gluon" in label:
                    from trimtab.backends.gpu.qkv_attention_gluon import qkv_attention_pingpong_kernel
                    tuned += tuning(f"{name} {label}", qkv_attention_pingpong_kernel)
                variants[key] = (lambda fn=fn, a=(x, w, col, bias, mask, out_q): fn(*a))
        times = cuda_graph_interleaved(variants, rounds=9, iters=20)
    rows = [(name, round(ms * 1000, 1), checks.get(name, "")) for name, ms in times.items()]
    env = gpu_environment()
    print(json.dumps(env))
    print("\n".join(tuned + compiled_variants()))
    for key, value in checks.items():
        if key not in times:
            print(f"check {key}: {value}")
    print(f"{'variant':32} {'us':>8}  check")
    for name, us, check in rows:
        print(f"{name:32} {us:8.1f}  {check}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "qkv_attention.json").write_text(json.dumps({"environment": env, "rows": rows, "checks": checks,
                                                                    "tuning": tuned}, indent=1))


if __name__ == "__main__":
    main()
