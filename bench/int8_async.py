"""BERT-base's int8 GEMMs: the Triton kernel (its products waited for at every K step) against the
warp-specialized Gluon kernel (`lowbit_gluon`: products kept in flight, two warpgroups overlapping
one's epilogue with the other's products), with fp8 through the Triton kernel (whose products
Triton already overlaps) for reference. One GPU run.

Layers at batch 128 x 128 tokens, each with the epilogue the engine gives it: Q/K/V 768 -> 2304
(fp16 out; the engine fuses it with the attention, so it runs alone only where that loses), the
attention output 768 -> 768 and FFN down 3072 -> 768 adding a recomputed LayerNorm output as their
residual (fp16 out), FFN up 768 -> 3072 with GELU, re-quantized to 8 bits. Each kernel is
autotuned on its first call. Checks: Gluon against Triton (share of outputs that differ, largest
difference: in codes for 8-bit outputs).
Timing: CUDA graphs of 20 calls, replayed in interleaved rounds, median (GPU time alone), random
operands.

Run: PYTHONPATH=src:bench python bench/int8_async.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _support import cuda_graph_interleaved, report_us
from trimtab.backends.gpu import lowbit
from trimtab.backends.gpu.norm_triton import layer_norm

TOKENS = 128 * 128
LAYERS = {  # name: (K, N, act, 8-bit out, residual)
    "QKV": (768, 2304, None, False, False),
    "attention out + residual": (768, 768, None, False, True),
    "FFN up + GELU, 8-bit out": (768, 3072, "gelu", True, False),
    "FFN down + residual": (3072, 768, None, False, True),
}


def operands(element: torch.dtype, k: int, n: int, residual: bool) -> dict:
    torch.manual_seed(0)
    top = 127 if element == torch.int8 else lowbit.FP8_MAX
    x = torch.randn(TOKENS, k, device="cuda")
    w = torch.randn(n, k, device="cuda") / k ** 0.5
    w_scale = w.abs().amax(dim=1) / top
    x_scale = float(x.abs().max()) / top
    o = {"x_q": lowbit.quantize(x, x_scale, element),
         "w_q": lowbit.quantize_reference(w / w_scale[:, None], 1.0, element).contiguous(),
         "col": (x_scale * w_scale).float().contiguous(), "bias": (torch.randn(n, device="cuda") * 0.1).half(),
         "residual": None}
    if residual:
        s = (torch.randn(TOKENS, n, device="cuda") * 2).half()
        gamma, beta = (torch.rand(n, device="cuda") + 0.5).half(), (torch.randn(n, device="cuda") * 0.1).half()
        stats, _ = layer_norm(s, gamma, beta, 1e-12, quant=(0.05, element), stats_only=True)
        o["residual"] = (s, stats, gamma, beta)
    return o


def gemm(o: dict, act, eight_bit: bool, async_int8: bool):
    element = o["x_q"].dtype
    out_dtype, out_scale = (element, 0.05) if eight_bit else (torch.float16, None)
    return lowbit.qgemm(o["x_q"], o["w_q"], o["col"], o["bias"], act, out_dtype, out_scale, tma=True,
                        residual=o["residual"], async_int8=async_int8)


def forced(o: dict, act, eight_bit: bool, kernel: str):
    """The int8 GEMM through one kernel: `lowbit.faster_int8_kernel`'s choice set for this call's key."""
    def run():
        keep = dict(lowbit._INT8_KERNELS)
        lowbit._INT8_KERNELS.clear()
        lowbit._INT8_KERNELS.update({key: kernel for key in _keys(o, act, eight_bit)})
        try:
            return gemm(o, act, eight_bit, async_int8=True)
        finally:
            lowbit._INT8_KERNELS.clear()
            lowbit._INT8_KERNELS.update(keep)
    return run


def _keys(o: dict, act, eight_bit: bool) -> list[tuple]:
    m, k = o["x_q"].shape
    n = o["w_q"].shape[0]
    out_dtype = o["x_q"].dtype if eight_bit else torch.float16
    residual = 0 if o["residual"] is None else 2
    return [(lowbit.bucket(m), n, k, str(out_dtype), True, lowbit.ACTS[act], int(eight_bit), residual)]


def compare(got: torch.Tensor, want: torch.Tensor) -> str:
    if got.dtype == torch.int8:
        diff = (got.int() - want.int()).abs()
        return f"codes differing {float((diff > 0).float().mean()):.1e}, max {int(diff.max())}"
    diff = (got.float() - want.float()).abs()
    return f"values differing {float((diff > 0).float().mean()):.1e}, max {float(diff.max()):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants, checks = {}, {}
    with torch.inference_mode():
        for layer, (k, n, act, eight_bit, residual) in LAYERS.items():
            o8 = operands(torch.int8, k, n, residual)
            of = operands(lowbit.FP8, k, n, residual)
            triton_run, gluon_run = forced(o8, act, eight_bit, "triton"), forced(o8, act, eight_bit, "gluon")
            checks[layer] = compare(gluon_run(), triton_run())
            variants[f"{layer}: int8 Triton"] = triton_run
            variants[f"{layer}: int8 Gluon ping-pong"] = gluon_run
            variants[f"{layer}: fp8 Triton"] = lambda of=of, act=act, eight_bit=eight_bit: gemm(of, act, eight_bit, True)
        times = cuda_graph_interleaved(variants, rounds=9, iters=20)
    report_us("int8_async", times, checks, args.out)

if __name__ == "__main__":
    main()
