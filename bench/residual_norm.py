"""BERT-base's residual add + LayerNorm after an 8-bit GEMM: written out, or deferred into the
next GEMM's epilogue (`fuse_int8.fuse_residual_add` + `defer_layer_norm`), one GPU run.

Per BERT layer, batch 128 x 128 tokens, hidden 768, both LayerNorms writing the 8-bit copy their
8-bit readers take. For each of the two GEMMs that end in a residual add (attention output
768 -> 768, FFN down 3072 -> 768), int8 and fp8:
  written   the engine before the fusion: the GEMM writes fp16, the norm adds the residual (the
            previous norm's written output), writes its output (fp16) and the 8-bit copy
  deferred  the GEMM adds the residual in its epilogue, recomputing the previous norm's output
            from that norm's input and (mean, 1 / std) per row; the norm writes its stats and the
            8-bit copy, not its output
Each pair is timed as GEMM + norm (what a layer runs) and as its parts. (Tried here and not kept,
bench/results/residual_norm-2026-11-27-h100-options.json: the residual loaded before the tile's
products, 1-4 us slower; programmatic dependent launch of the GEMM and norm kernels, no faster;
16 rows a norm program, slower than 8. In that file the "written" rows include an extra
elementwise add from an earlier version of the check: compare its parts instead.) Checks: the deferred
path's sum against the written path's (share of fp16 values that differ), and its 8-bit copy
(share of codes that differ).
Timing: CUDA graphs of 20 calls, replayed in interleaved rounds, median (GPU time alone), on
random operands (the engine's build-time timing runs on zeros, which draw less power).

Run: PYTHONPATH=src:bench python bench/residual_norm.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _support import cuda_graph_interleaved, report_us
from trimtab.backends.gpu import lowbit
from trimtab.backends.gpu.norm_triton import layer_norm

TOKENS, HIDDEN, EPS = 128 * 128, 768, 1e-12
LAYERS = {"attention out": 768, "FFN down": 3072}


def operands(element: torch.dtype, k: int) -> dict:
    torch.manual_seed(0)
    top = 127 if element == torch.int8 else lowbit.FP8_MAX
    x = torch.randn(TOKENS, k, device="cuda")
    w = torch.randn(HIDDEN, k, device="cuda") / k ** 0.5
    w_scale = w.abs().amax(dim=1) / top
    x_scale = float(x.abs().max()) / top
    gamma, beta = (torch.rand(HIDDEN, device="cuda") + 0.5).half(), (torch.randn(HIDDEN, device="cuda") * 0.1).half()
    pre_norm = (torch.randn(TOKENS, HIDDEN, device="cuda") * 2).half()  # the previous norm's input
    prev_out, prev_q = layer_norm(pre_norm, gamma, beta, EPS, quant=(0.05, element))
    prev_stats, _ = layer_norm(pre_norm, gamma, beta, EPS, quant=(0.05, element), stats_only=True)
    return {"x_q": lowbit.quantize(x, x_scale, element),
            "w_q": lowbit.quantize_reference(w / w_scale[:, None], 1.0, element).contiguous(),
            "col": (x_scale * w_scale).float().contiguous(), "bias": (torch.randn(HIDDEN, device="cuda") * 0.1).half(),
            "gamma": gamma, "beta": beta, "pre_norm": pre_norm, "prev_out": prev_out, "prev_stats": prev_stats,
            "quant": (0.05, element)}


def written(o: dict):
    y = lowbit.qgemm(o["x_q"], o["w_q"], o["col"], o["bias"], None, torch.float16)
    return y, layer_norm(y, o["gamma"], o["beta"], EPS, residual=o["prev_out"], quant=o["quant"])


def deferred(o: dict):
    residual = (o["pre_norm"], o["prev_stats"], o["gamma"], o["beta"])
    y = lowbit.qgemm(o["x_q"], o["w_q"], o["col"], o["bias"], None, torch.float16, residual=residual)
    return y, layer_norm(y, o["gamma"], o["beta"], EPS, quant=o["quant"], stats_only=True)


def parts(o: dict) -> dict:
    """The four kernels alone, on the same operands."""
    y = lowbit.qgemm(o["x_q"], o["w_q"], o["col"], o["bias"], None, torch.float16)
    residual = (o["pre_norm"], o["prev_stats"], o["gamma"], o["beta"])
    return {
        "GEMM, fp16 out": lambda: lowbit.qgemm(o["x_q"], o["w_q"], o["col"], o["bias"], None, torch.float16),
        "GEMM + recomputed residual": lambda: lowbit.qgemm(o["x_q"], o["w_q"], o["col"], o["bias"], None,
                                                           torch.float16, residual=residual),
        "add + norm + copy": lambda: layer_norm(y, o["gamma"], o["beta"], EPS, residual=o["prev_out"], quant=o["quant"]),
        "norm stats + copy": lambda: layer_norm(y, o["gamma"], o["beta"], EPS, quant=o["quant"], stats_only=True),
    }


def check(o: dict) -> str:
    """The deferred path's pre-norm sum and 8-bit copy against the written path's."""
    (y_w, (_, q_w)), (y_d, (_, q_d)) = written(o), deferred(o)
    sums = float((y_w + o["prev_out"] != y_d).float().mean())
    codes = float((q_w.view(torch.uint8) != q_d.view(torch.uint8)).float().mean())
    return f"sums differing {sums:.1e}, codes differing {codes:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants, checks = {}, {}
    with torch.inference_mode():
        for element_name, element in (("int8", torch.int8), ("fp8", lowbit.FP8)):
            for layer, k in LAYERS.items():
                o = operands(element, k)
                checks[f"{element_name} {layer}"] = check(o)
                variants[f"{element_name} {layer}: written"] = lambda o=o: written(o)
                variants[f"{element_name} {layer}: deferred"] = lambda o=o: deferred(o)
                for part, fn in parts(o).items():
                    variants[f"{element_name} {layer}: {part}"] = fn
        times = cuda_graph_interleaved(variants, rounds=9, iters=20)
    report_us("residual_norm", times, checks, args.out)

if __name__ == "__main__":
    main()
