"""Which schedule and which epilogue conversions for the 8-bit GEMM on Hopper, per BERT-base layer.

At BERT's K = 768 a tile has only 3-6 K steps, so the epilogue (int32 -> float, scale, bias,
GELU, re-quantize, store) is a large share of each tile's time. Variants against the engine's
autotuned TMA kernel (`lowbit.qgemm`):
  tile, old rounding      the engine's kernel with the int8 rounding it had before run 11 (rint +
                          a float -> int8 conversion: two conversion instructions per element)
  tile, split i2f         int32 -> float by integer bit tricks instead of the conversion instruction
  persistent[, split i2f] one program per SM walking the tiles, `flatten`ed so the next tile's
                          loads are issued during this tile's epilogue
  tile, big / persistent, big   256x256 tiles on 16 warps, 256x128 tiles, 2-CTA clusters
                          (`--schedules "tile, big" "persistent, big"`)
Results: bench/results/gemm_schedules-2026-11-26-h100-epilogue.json and ...-big-tiles.json
(`docs/gpu.md`, "Runs 11-16"). An earlier version of this
script also tried Triton's warp specialisation (on the K loop, and on a persistent tile loop, with
and without a split epilogue store): no faster on the H100 (Triton 3.6), and it failed to compile
with 4 warps (bench/results/gemm_schedules-2026-11-26-h100-ws.json).

Shapes: BERT-base's four linear layers at 16,384 tokens, int8 (and fp8 for FFN up), each with the
engine's epilogue. Every variant is checked against the engine's kernel (int8 codes within one
step, fp16 within 1%), then timed from CUDA graphs of 20 calls, interleaved, median. A
schedule/config that does not compile on this GPU is reported as such.

Run: PYTHONPATH=src:. python bench/gemm_schedules.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import triton
import triton.language as tl
from _support import cuda_graph_interleaved, gpu_environment
from triton.language.extra import libdevice
from triton.tools.tensor_descriptor import TensorDescriptor

from trimtab.backends.gpu import lowbit
from trimtab.backends.gpu.lowbit_triton import epilogue, tile_of, tile_sums

SHAPES = [("qkv", 768, 2304, None), ("attn_out", 768, 768, None), ("ffn_up", 768, 3072, "gelu"),
          ("ffn_down", 3072, 768, None)]
# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps)
CONFIGS = [(128, 256, 128, 3, 8), (128, 128, 128, 4, 8), (128, 128, 128, 4, 4), (128, 256, 64, 4, 8),
           (128, 128, 256, 2, 8)]
# Bigger tiles read less from L2 per product (a 128x256 tile at K = 768 pulls 294 KB through L2
# for 50 MFLOP, which at ~50 KB/us per SM is about the time the tile takes); 16 warps hold a
# 256x256 int32 tile in 128 registers a thread. A sixth entry is the CTA cluster size (num_ctas).
BIG_CONFIGS = [(256, 256, 64, 3, 16), (256, 256, 128, 2, 16), (256, 128, 128, 3, 8), (128, 256, 128, 3, 8, 2),
               (256, 256, 64, 4, 16), (256, 128, 64, 4, 8)]


@triton.jit
def int_to_float(acc):
    """float(acc) for an int32 tensor, correctly rounded, without the conversion instruction: the
    high and low 16 bits each become an exact float by the same mantissa trick (the low half with
    2^23 under it, the high half with 1.5 * 2^23), and one fused multiply-add joins them."""
    lo = ((acc & 0xFFFF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
    hi = ((acc >> 16) + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0
    return tl.fma(hi, 65536.0, lo)


@triton.jit
def finish(acc, cols, N, scale_ptr, bias_ptr, out_scale, IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr,
           ACT: tl.constexpr, OUT_Q: tl.constexpr, FAST: tl.constexpr, SPLIT_I2F: tl.constexpr,
           CVT_ROUND: tl.constexpr, out_ty: tl.constexpr):
    """The engine's epilogue with the two conversion choices open: int32 -> float by the conversion
    instruction or by `int_to_float`, and int8 rounding by rint + conversion (CVT_ROUND, the
    engine's code before 2026-11-26 run 11) or by `round_to_int8`."""
    if IS_INT8 and SPLIT_I2F:
        acc = int_to_float(acc)
    if OUT_Q == 1 and CVT_ROUND:
        y = epilogue(acc, cols, N, scale_ptr, bias_ptr, 1.0, HAS_BIAS, ACT, 0, FAST, tl.float32) * (1.0 / out_scale)
        return tl.minimum(tl.maximum(libdevice.rint(y), -128.0), 127.0).to(tl.int8)
    return epilogue(acc, cols, N, scale_ptr, bias_ptr, out_scale, HAS_BIAS, ACT, OUT_Q, FAST, out_ty)


@triton.jit
def _tile(tile_id, a_desc, b_desc, c_desc, scale_ptr, bias_ptr, M, N, K, out_scale, IS_INT8: tl.constexpr,
          HAS_BIAS: tl.constexpr, ACT: tl.constexpr, OUT_Q: tl.constexpr, FAST: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
          SPLIT_I2F: tl.constexpr, CVT_ROUND: tl.constexpr):
    """One output tile as the engine's `_tma_tile` computes it, with `finish` as its epilogue."""
    pid_m, pid_n = tile_of(tile_id, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
    acc = tile_sums(a_desc, b_desc, off_m, off_n, K, IS_INT8, BLOCK_M, BLOCK_N, BLOCK_K)
    cols = off_n + tl.arange(0, BLOCK_N)
    c_desc.store([off_m, off_n], finish(acc, cols, N, scale_ptr, bias_ptr, out_scale, IS_INT8, HAS_BIAS, ACT, OUT_Q,
                                        FAST, SPLIT_I2F, CVT_ROUND, c_desc.dtype))


@triton.jit
def tile_kernel(a_desc, b_desc, c_desc, scale_ptr, bias_ptr, M, N, K, out_scale, IS_INT8: tl.constexpr,
                HAS_BIAS: tl.constexpr, ACT: tl.constexpr, OUT_Q: tl.constexpr, FAST: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                SPLIT_I2F: tl.constexpr, CVT_ROUND: tl.constexpr):
    """One program per tile (the engine's TMA kernel's non-persistent configs)."""
    _tile(tl.program_id(0), a_desc, b_desc, c_desc, scale_ptr, bias_ptr, M, N, K, out_scale, IS_INT8, HAS_BIAS, ACT,
          OUT_Q, FAST, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_I2F, CVT_ROUND)


@triton.jit
def persistent_kernel(a_desc, b_desc, c_desc, scale_ptr, bias_ptr, M, N, K, out_scale, IS_INT8: tl.constexpr,
                      HAS_BIAS: tl.constexpr, ACT: tl.constexpr, OUT_Q: tl.constexpr, FAST: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      SPLIT_I2F: tl.constexpr, CVT_ROUND: tl.constexpr, NUM_SMS: tl.constexpr):
    """One program per SM walking the tiles; `flatten` lets the software pipeliner issue the next
    tile's loads during this tile's epilogue. (Warp specialisation, tried in the previous run of
    this script, was no faster on the H100 and did not compile with 4 warps.)"""
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=True):
        _tile(tile_id, a_desc, b_desc, c_desc, scale_ptr, bias_ptr, M, N, K, out_scale, IS_INT8, HAS_BIAS, ACT, OUT_Q,
              FAST, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_I2F, CVT_ROUND)


def launcher(schedule: str, cfg: tuple, a, w, col, bias, act, out_dtype, out_scale, **flags):
    bm, bn, bk, stages, warps = cfg[:5]
    ctas = cfg[5] if len(cfg) > 5 else 1
    m, k = a.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    da, db = TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk])
    dc = TensorDescriptor.from_tensor(out, [bm, bn])
    common = {"IS_INT8": a.dtype == torch.int8, "HAS_BIAS": True, "ACT": lowbit.ACTS[act],
              "OUT_Q": 0 if out_scale is None else (1 if out_dtype == torch.int8 else 2), "FAST": True,
              "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps, "num_stages": stages, "num_ctas": ctas,
              **flags}
    scale = 1.0 if out_scale is None else out_scale
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count

    def run():
        if schedule == "tile":
            tile_kernel[(tiles,)](da, db, dc, col, bias, m, n, k, scale, **common)
        else:
            persistent_kernel[(min(sms, tiles),)](da, db, dc, col, bias, m, n, k, scale, NUM_SMS=sms, **common)
        return out
    return run


SCHEDULES = {
    "tile, old rounding": ("tile", {"SPLIT_I2F": False, "CVT_ROUND": True}),
    "tile, big": ("tile", {"SPLIT_I2F": False, "CVT_ROUND": False}),
    "persistent, big": ("persistent", {"SPLIT_I2F": False, "CVT_ROUND": False}),
    "tile, split i2f": ("tile", {"SPLIT_I2F": True, "CVT_ROUND": False}),
    "persistent": ("persistent", {"SPLIT_I2F": False, "CVT_ROUND": False}),
    "persistent, split i2f": ("persistent", {"SPLIT_I2F": True, "CVT_ROUND": False}),
}


def operands(k: int, n: int, m: int, fp8: bool):
    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16) / k ** 0.5
    bias = (torch.randn(n, device="cuda") * 0.1).float()
    top = lowbit.FP8_MAX if fp8 else 127
    x_scale = float(x.abs().max()) / top
    w_scale = w.float().abs().amax(dim=1) / top
    dtype = lowbit.FP8 if fp8 else torch.int8
    xq = lowbit.quantize(x, x_scale, dtype)
    wq = lowbit.quantize_reference(w.float() / w_scale[:, None], 1.0, dtype).contiguous()
    return xq, wq, (x_scale * w_scale).float().contiguous(), bias


def bench_shape(name, k, n, act, m, fp8, rows, chosen) -> None:
    xq, wq, col, bias = operands(k, n, m, fp8)
    out_scale = 0.05 if act else None
    out_dtype = (lowbit.FP8 if fp8 else torch.int8) if act else torch.float16
    engine = lambda: lowbit.qgemm(xq, wq, col, bias, act, out_dtype, out_scale, tma=True)
    ref = engine().float()
    variants, notes = {"engine tma (autotuned)": engine}, {}
    schedules = {k: v for k, v in SCHEDULES.items() if k in chosen}
    if fp8:
        schedules = {k: v for k, v in schedules.items() if "i2f" not in k and "old" not in k}
    else:
        schedules = {k: v for k, v in schedules.items() if act or "old" not in k}
    for label, (schedule, flags) in schedules.items():
        for cfg in BIG_CONFIGS if "big" in label else CONFIGS:
            key = f"{label} {cfg}"
            try:
                run = launcher(schedule, cfg, xq, wq, col, bias, act, out_dtype, out_scale, **flags)
                diff = float((run().float() - ref).abs().max())
                torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001  (a schedule this GPU/Triton cannot build)
                notes[key] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
                continue
            tolerance = 1.0 if act else 1e-2 * float(ref.abs().max())
            if diff > tolerance:
                notes[key] = f"wrong: max diff {diff}"
                continue
            variants[key] = run
    times = cuda_graph_interleaved(variants, rounds=5, iters=20)
    base = times["engine tma (autotuned)"]
    best: dict[str, tuple] = {}
    for key, ms in times.items():
        label = key.split(" (")[0]
        if label not in best or ms < best[label][1]:
            best[label] = (key, ms)
    precision = "fp8" if fp8 else "int8"
    for label, (key, ms) in sorted(best.items(), key=lambda kv: kv[1][1]):
        rows.append((name, precision, key, round(ms * 1000, 1), round(base / ms, 3)))
    for key, note in notes.items():
        rows.append((name, precision, key, note, ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--shapes", nargs="+", default=[s[0] for s in SHAPES])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    args = parser.parse_args()
    env = gpu_environment()
    print(json.dumps(env), flush=True)
    rows: list = []
    for name, k, n, act in SHAPES:
        if name not in args.shapes:
            continue
        for fp8 in ((False, True) if name == "ffn_up" else (False,)):
            t0 = time.perf_counter()
            bench_shape(name, k, n, act, args.tokens, fp8, rows, args.schedules)
            print(f"# {name} {'fp8' if fp8 else 'int8'} {time.perf_counter() - t0:.0f} s", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gemm_schedules.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    print("| layer | precision | schedule (best config) | us | x engine |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
