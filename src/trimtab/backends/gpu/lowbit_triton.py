"""Triton kernels of `lowbit` (imported only on CUDA machines: Triton comes with CUDA PyTorch).

`qgemm_kernel`: one program per output tile, pointer loads, grouped tile order, epilogue fused
(`epilogue`). `qgemm_tma_kernel`: the same with the TMA copy engine moving the tiles, faster on
every BERT shape on an H100 (bench/results/lowbit_gemm-2026-11-26-h100.json: 4-14%); lowbit.qgemm
takes it wherever the rows are 16-byte aligned. (A persistent TMA variant was slower than both on
an H200 and was removed.)
`quantize_kernel`: one pass float -> int8 / fp8 (or straight back to float: fake-quant).

The GEMMs are tuned per M rounded up to a power of two (`M_BUCKET`, unused in the body), not per
exact M: evaluating a text model builds one engine per padded sequence length, and tuning 16 tile
configs for every one of them took most of `tune --target gpu`'s evaluation on MiniLM.

The epilogue is plain fp32 arithmetic on every output element, and at BERT's K = 768 it is not
small beside the 8-bit products: an erf-GELU (a libdevice polynomial) plus an IEEE division per
element made the FFN up-projection cost as much as one twice its size. With `FAST` the epilogue
multiplies by the reciprocal scale (it rounds differently from x / scale only within one float
ulp of a .5 tie) and takes GELU in its tanh form on the GPU's one-instruction `tanh.approx.f32`
(at most ~1e-3 from erf-GELU: below the fp16 output's own rounding for |y| > 1, and a few percent
of an int8 step).
"""

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def fast_tanh(x):
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def round_to_int8(y):
    """y (fp32) rounded half to even and saturated to int8, on the FP32 pipe. Adding 1.5 * 2^23
    leaves round(y) in the low mantissa bits (exact for |y| < 2^22, so after the clamp), and the
    int8 is their low byte. `rint` and a float -> int8 conversion instead take two conversion
    instructions per element, which H100s issue at 16 per clock per SM against 128 for an FP32 add:
    in the int8 FFN up-projection's epilogue they cost about as much as its matrix products."""
    y = tl.minimum(tl.maximum(y, -128.0), 127.0)
    return (y + 12582912.0).to(tl.int32, bitcast=True).to(tl.int8)


@triton.jit
def round_int8_as_float(y):
    """`round_to_int8(y)` as an fp32 value (for a dequantize that follows), again without the
    conversion unit: after the add the float holds round(y) + 1.5 * 2^23 exactly."""
    y = tl.minimum(tl.maximum(y, -128.0), 127.0)
    return (y + 12582912.0) - 12582912.0


@triton.jit
def epilogue(acc, cols, N, scale_ptr, bias_ptr, out_scale, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
             OUT_Q: tl.constexpr, FAST: tl.constexpr, out_ty: tl.constexpr):
    y = acc.to(tl.float32) * tl.load(scale_ptr + cols, mask=cols < N, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        y = tl.maximum(y, 0.0)
    if ACT == 2:
        if FAST:
            y = 0.5 * y * (1.0 + fast_tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))
        else:
            y = 0.5 * y * (1.0 + libdevice.erf(y * 0.7071067811865476))
    if OUT_Q != 0:
        if FAST:
            y = y * (1.0 / out_scale)
        else:  # x / scale rounded as IEEE division does (ONNX QuantizeLinear), not x * (1 / scale)
            y = libdevice.div_rn(y, out_scale)
    if OUT_Q == 1:
        return round_to_int8(y)
    elif OUT_Q == 2:
        return tl.minimum(tl.maximum(y, -448.0), 448.0).to(tl.float8e4nv)
    else:
        return y.to(out_ty)


@triton.jit
def load_residual(rows, cols, M, N, res_ptr, stats_ptr, RESIDUAL: tl.constexpr):
    """The residual tile [rows, cols] (and for RESIDUAL 2 its rows' mean and 1 / std). Loaded after
    the tile's products: loading it before them (in flight meanwhile) was 1-4 us slower per BERT
    layer (bench/results/residual_norm-2026-11-27-h100-options.json)."""
    live = (rows < M)[:, None] & (cols < N)[None, :]
    r = tl.load(res_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], mask=live, other=0.0)
    mean = tl.zeros_like(rows).to(tl.float32)
    rstd = mean
    if RESIDUAL == 2:
        mean = tl.load(stats_ptr + rows.to(tl.int64) * 2, mask=rows < M, other=0.0)
        rstd = tl.load(stats_ptr + rows.to(tl.int64) * 2 + 1, mask=rows < M, other=0.0)
    return r, mean, rstd


@triton.jit
def add_residual(out, r, mean, rstd, cols, N, gamma_ptr, beta_ptr, RESIDUAL: tl.constexpr):
    """out (the epilogue's tile, in the output's type) + the residual branch, rounded as the
    artifact's Add of two tensors of that type. RESIDUAL 1: r is the residual tensor's tile.
    RESIDUAL 2: r is the tile of the input of a LayerNorm whose output was not written
    (`norm_triton`, stats only), and the output is recomputed here from it, the rows' mean and
    1 / std and the norm's scale and bias, with the norm kernel's own fp32 arithmetic and
    rounding. That saves the norm's output write and this read of it: 50 MB a BERT-base layer
    norm at batch 128."""
    if RESIDUAL == 2:
        gamma = tl.load(gamma_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        y = (r.to(tl.float32) - mean[:, None]) * rstd[:, None] * gamma[None, :]
        y += beta[None, :]
        r = y.to(out.dtype)
    return out + r.to(out.dtype)


@triton.jit
def tile_of(tile_id, num_m, num_n, GROUP_M: tl.constexpr):
    # grouped tile order: neighbouring programs share A rows in L2
    width = GROUP_M * num_n
    first_m = (tile_id // width) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (tile_id % width) % size_m, (tile_id % width) // size_m


# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps). BLOCK_K 256 halves the K loop at K = 768 (3 steps);
# 8 warps are two Hopper warpgroups sharing one tile.
TILES = [
    (128, 256, 128, 3, 8), (128, 128, 128, 4, 8), (128, 128, 128, 3, 4), (256, 128, 128, 3, 8),
    (128, 256, 64, 4, 8), (128, 128, 256, 3, 8), (128, 128, 256, 2, 4), (128, 256, 256, 2, 8),
    (256, 128, 256, 2, 8), (128, 128, 128, 5, 4), (128, 128, 128, 2, 4), (128, 128, 64, 4, 4),
]
def few_configs(configs, named_args, **kwargs):
    """With TRIMTAB_QUICK_TUNE=1 (the test suite) the autotuner tries only the first config: the
    tests check values, and timing every tile shape per new matrix shape costs minutes there."""
    return configs[:1] if os.environ.get("TRIMTAB_QUICK_TUNE") == "1" else configs


def few_gemm_configs(configs, named_args, **kwargs):
    """`few_configs` for the GEMMs: one small tile that fits shared memory for 16-bit operands too."""
    if os.environ.get("TRIMTAB_QUICK_TUNE") != "1":
        return configs
    first = configs[0]
    return [triton.Config({**first.kwargs, "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_stages=3, num_warps=4,
                          pre_hook=first.pre_hook)]


configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
           for bm, bn, bk, s, w in TILES]


@triton.autotune(configs=configs, key=["M_BUCKET", "N", "K", "IS_INT8", "ACT", "OUT_Q", "FAST", "RESIDUAL"],
                 prune_configs_by={"early_config_prune": few_gemm_configs})
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def qgemm_kernel(a_ptr, b_ptr, c_ptr, scale_ptr, bias_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr, M, N, K,
                 stride_am, stride_bn, stride_cm, out_scale, IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr,
                 ACT: tl.constexpr, OUT_Q: tl.constexpr, FAST: tl.constexpr, RESIDUAL: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, M_BUCKET=1):
    pid_m, pid_n = tile_of(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    # wrapped indices keep the loads unmasked along M and N (the store is masked)
    a_ptrs = a_ptr + (rows % M)[:, None] * stride_am + ks[None, :]
    b_ptrs = b_ptr + (cols % N)[None, :] * stride_bn + ks[:, None]  # [BLOCK_K, BLOCK_N], K-major
    if IS_INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=ks[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=ks[:, None] < k_left, other=0.0)
        if IS_INT8:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    out = epilogue(acc, cols, N, scale_ptr, bias_ptr, out_scale, HAS_BIAS, ACT, OUT_Q, FAST, c_ptr.dtype.element_ty)
    if RESIDUAL != 0:
        r, mean, rstd = load_residual(rows, cols, M, N, res_ptr, stats_ptr, RESIDUAL)
        out = add_residual(out, r, mean, rstd, cols, N, gamma_ptr, beta_ptr, RESIDUAL)
    c_ptrs = c_ptr + rows[:, None] * stride_cm + cols[None, :]
    tl.store(c_ptrs, out, mask=(rows[:, None] < M) & (cols[None, :] < N))


@triton.jit
def quantize_kernel(x_ptr, y_ptr, n, scale, IS_INT8: tl.constexpr, DEQUANT: tl.constexpr, FAST: tl.constexpr,
                    BLOCK: tl.constexpr):
    """y = quantize(x) (8-bit), or with DEQUANT the value it stands for, in y's float type."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    if FAST:
        x = x * (1.0 / scale)
    else:
        x = libdevice.div_rn(x, scale)
    if DEQUANT and IS_INT8:
        tl.store(y_ptr + offs, (round_int8_as_float(x) * scale).to(y_ptr.dtype.element_ty), mask=offs < n)
    elif DEQUANT:
        q = tl.minimum(tl.maximum(x, -448.0), 448.0).to(tl.float8e4nv)
        tl.store(y_ptr + offs, (q.to(tl.float32) * scale).to(y_ptr.dtype.element_ty), mask=offs < n)
    elif IS_INT8:
        tl.store(y_ptr + offs, round_to_int8(x), mask=offs < n)
    else:
        tl.store(y_ptr + offs, tl.minimum(tl.maximum(x, -448.0), 448.0).to(tl.float8e4nv), mask=offs < n)


def _tma_blocks(nargs):
    """Block shapes of the TMA descriptors for the config being run (they depend on the tiles)."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk]
    nargs["c_desc"].block_shape = [bm, bn]


# Persistent configs (one program per SM walking the tiles, `flatten` letting the pipeliner load
# the next tile during this one's epilogue): 4-8% faster on BERT's FFN up-projection, 2-4% slower
# on the fp16-out layers (bench/results/gemm_schedules-2026-11-26-h100-*.json), so the autotuner
# picks per shape. Two-CTA tiles (2 stages of 128x128x128 8-bit fit twice in shared memory) let
# one program's epilogue overlap another's matrix products.
PERSISTENT_TILES = [(128, 256, 128, 3, 8), (128, 128, 128, 4, 8)]
tma_configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "PERSISTENT": persistent},
                             num_stages=s, num_warps=w, pre_hook=_tma_blocks)
               for tiles, persistent in ((TILES, False), (PERSISTENT_TILES, True)) for bm, bn, bk, s, w in tiles]


@triton.jit
def mma(a, b, acc, IS_INT8: tl.constexpr):
    """acc + a @ b on the tensor cores: int32 sums for int8 operands, fp32 otherwise."""
    if IS_INT8:
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def tile_sums(a_desc, b_desc, off_m, off_n, K, IS_INT8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """The [BLOCK_M, BLOCK_N] sums of A[off_m:] @ B[off_n:]^T over all of K, the tiles moved by TMA
    (A [M, K] and B [N, K] descriptors)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if IS_INT8 else tl.float32)
    for ki in range(tl.cdiv(K, BLOCK_K)):
        acc = mma(a_desc.load([off_m, ki * BLOCK_K]), b_desc.load([off_n, ki * BLOCK_K]).T, acc, IS_INT8)
    return acc


@triton.jit
def _tma_tile(tile_id, a_desc, b_desc, c_desc, scale_ptr, bias_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr, M, N, K,
              out_scale, IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, OUT_Q: tl.constexpr,
              FAST: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = tile_of(tile_id, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
    rows, cols = off_m + tl.arange(0, BLOCK_M), off_n + tl.arange(0, BLOCK_N)
    acc = tile_sums(a_desc, b_desc, off_m, off_n, K, IS_INT8, BLOCK_M, BLOCK_N, BLOCK_K)
    out = epilogue(acc, cols, N, scale_ptr, bias_ptr, out_scale, HAS_BIAS, ACT, OUT_Q, FAST, c_desc.dtype)
    if RESIDUAL != 0:
        r, mean, rstd = load_residual(rows, cols, M, N, res_ptr, stats_ptr, RESIDUAL)
        out = add_residual(out, r, mean, rstd, cols, N, gamma_ptr, beta_ptr, RESIDUAL)
    c_desc.store([off_m, off_n], out)


@triton.autotune(configs=tma_configs, key=["M_BUCKET", "N", "K", "IS_INT8", "ACT", "OUT_Q", "FAST", "RESIDUAL"],
                 prune_configs_by={"early_config_prune": few_gemm_configs})
@triton.jit
def qgemm_tma_kernel(a_desc, b_desc, c_desc, scale_ptr, bias_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr, M, N, K,
                     out_scale, IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                     OUT_Q: tl.constexpr, FAST: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, PERSISTENT: tl.constexpr, NUM_SMS: tl.constexpr, M_BUCKET=1):
    """`qgemm_kernel` with the tiles moved by the TMA copy engine (descriptor loads and store; out of
    range rows and columns are zero-filled on load and dropped on store): one program per tile, or
    with PERSISTENT one per SM (NUM_SMS programs) taking every NUM_SMS-th tile."""
    if PERSISTENT:
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=True):
            _tma_tile(tile_id, a_desc, b_desc, c_desc, scale_ptr, bias_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr, M,
                      N, K, out_scale, IS_INT8, HAS_BIAS, ACT, OUT_Q, FAST, RESIDUAL, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    else:
        _tma_tile(tl.program_id(0), a_desc, b_desc, c_desc, scale_ptr, bias_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr,
                  M, N, K, out_scale, IS_INT8, HAS_BIAS, ACT, OUT_Q, FAST, RESIDUAL, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
