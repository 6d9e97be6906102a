"""The int8 GEMM of `lowbit` written in Gluon, Triton's lower-level dialect, so that its Hopper
tensor-core products run asynchronously.

Why a second kernel: Triton 3.6's software pipeliner keeps a `wgmma` in flight across K steps only
when its accumulator is fp32 (WGMMAPipeline.cpp, "Rule 2.1"). int8 products accumulate in int32,
so `lowbit_triton.qgemm_tma_kernel` waits for every int8 product before it issues the next (the
PTX has `wgmma.wait_group 0` inside the K loop; the fp8 build of the same kernel has `wait_group
1`), and the tensor cores idle between K steps. That is why the fp8 engine beat the int8 one on
every BERT layer by 5-13% with the same structure. Here the K loop is written out by hand: a ring
of STAGES shared-memory buffers filled by TMA under mbarriers, each product issued asynchronously
and waited for only one step later (`warpgroup_mma_wait(1)`), when its buffers are refilled.

The epilogue is `lowbit_triton.epilogue` + `add_residual`, written again with Gluon's explicit
layouts (same arithmetic, same rounding: the values match the Triton kernel's, checked by the
CUDA tests). Only the engine's fast epilogue (reciprocal scale, tanh GELU) is offered.
"""

import os

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

_GL_TYPES = {"torch.int8": gl.int8, "torch.float16": gl.float16, "torch.bfloat16": gl.bfloat16,
             "torch.float32": gl.float32, "torch.float8_e4m3fn": gl.float8e4nv}

# (BLOCK_M, BLOCK_N, BLOCK_K, STAGES, warps), autotuned per layer shape like the Triton kernel's
TILES = [(128, 128, 128, 3, 4), (128, 256, 128, 3, 8), (128, 128, 128, 2, 4), (128, 128, 64, 4, 4),
         (128, 256, 64, 4, 8), (256, 128, 128, 3, 8)]


@gluon.constexpr_function
def _instr_n(block_n):
    """The widest int8 wgmma N (at most 224 for 8-bit integers) that divides the tile."""
    n = 224
    while block_n % n:
        n -= 16
    return n


@gluon.jit
def _fast_tanh(x):
    return gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def _epilogue(acc, rows, cols, M, N, scale_ptr, bias_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr, out_scale,
              HAS_BIAS: gl.constexpr, ACT: gl.constexpr, OUT_Q: gl.constexpr, RESIDUAL: gl.constexpr,
              out_ty: gl.constexpr):
    """`lowbit_triton.epilogue` (FAST) then `add_residual`, on the accumulator's own layout."""
    y = acc.to(gl.float32) * gl.load(scale_ptr + cols, mask=cols < N, other=0.0)[None, :]
    if HAS_BIAS:
        y += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)[None, :]
    if ACT == 1:
        y = gl.maximum(y, 0.0)
    if ACT == 2:
        y = 0.5 * y * (1.0 + _fast_tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))
    if OUT_Q != 0:
        y = y * (1.0 / out_scale)
    if OUT_Q == 1:  # round half to even on the FP32 pipe (lowbit_triton.round_to_int8)
        y = gl.minimum(gl.maximum(y, -128.0), 127.0)
        return (y + 12582912.0).to(gl.int32, bitcast=True).to(gl.int8)
    if OUT_Q == 2:
        return gl.minimum(gl.maximum(y, -448.0), 448.0).to(gl.float8e4nv)
    out = y.to(out_ty)
    if RESIDUAL != 0:
        live = (rows < M)[:, None] & (cols < N)[None, :]
        r = gl.load(res_ptr + rows.to(gl.int64)[:, None] * N + cols[None, :], mask=live, other=0.0)
        if RESIDUAL == 2:
            mean = gl.load(stats_ptr + rows.to(gl.int64) * 2, mask=rows < M, other=0.0)
            rstd = gl.load(stats_ptr + rows.to(gl.int64) * 2 + 1, mask=rows < M, other=0.0)
            gamma = gl.load(gamma_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
            beta = gl.load(beta_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
            z = (r.to(gl.float32) - mean[:, None]) * rstd[:, None] * gamma[None, :]
            z += beta[None, :]
            r = z.to(out_ty)
        out = out + r.to(out_ty)
    return out


def _blocks(nargs):
    """The descriptors' block shapes and shared layouts for the config being run."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    for name, block in (("a_desc", [bm, bk]), ("b_desc", [bn, bk]), ("c_desc", [bm, bn])):
        desc = nargs[name]
        desc.block_shape = block
        desc.layout = gl.NVMMASharedLayout.get_default_for(block, _GL_TYPES[str(desc.base.dtype)])


def _quick(configs, named_args, **kwargs):
    return configs[:1] if os.environ.get("TRIMTAB_QUICK_TUNE") == "1" else configs


@triton.autotune(configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "STAGES": s, "GROUP_M": 8},
                                        num_warps=w, pre_hook=_blocks) for bm, bn, bk, s, w in TILES],
                 key=["M_BUCKET", "N", "K", "ACT", "OUT_Q", "RESIDUAL"], prune_configs_by={"early_config_prune": _quick})
@gluon.jit
def qgemm_async_kernel(a_desc, b_desc, c_desc, scale_ptr, bias_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr, M, N, K,
                       out_scale, HAS_BIAS: gl.constexpr, ACT: gl.constexpr, OUT_Q: gl.constexpr,
                       RESIDUAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                       STAGES: gl.constexpr, GROUP_M: gl.constexpr, num_warps: gl.constexpr, M_BUCKET=1):
    """One [BLOCK_M, BLOCK_N] output tile of act(A @ B^T * scale + bias) [+ residual] per program:
    A [M, K] and B [N, K] int8 through TMA descriptors (block shapes set per config: `_blocks`),
    int32 sums, the tile stored by TMA."""
    # grouped tile order (lowbit_triton.tile_of): neighbouring programs share A rows in L2
    num_m, num_n = gl.cdiv(M, BLOCK_M), gl.cdiv(N, BLOCK_N)
    tile = gl.program_id(0)
    width = GROUP_M * num_n
    first_m = (tile // width) * GROUP_M
    size_m = gl.minimum(num_m - first_m, GROUP_M)
    off_m = (first_m + (tile % width) % size_m) * BLOCK_M
    off_n = ((tile % width) // size_m) * BLOCK_N

    warps_m: gl.constexpr = 4 if BLOCK_M // 16 < num_warps else num_warps
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[warps_m, num_warps // warps_m],
                                                     instr_shape=[16, _instr_n(BLOCK_N // (num_warps // warps_m)), 32])
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    k_tiles = gl.cdiv(K, BLOCK_K)
    step_bytes: gl.constexpr = a_desc.block_type.nbytes + b_desc.block_type.nbytes
    for i in gl.static_range(STAGES - 1):  # fill the ring ahead
        ready = i < k_tiles
        mbarrier.expect(bars.index(i), step_bytes, pred=ready)
        tma.async_copy_global_to_shared(a_desc, [off_m, i * BLOCK_K], bars.index(i), a_bufs.index(i), pred=ready)
        tma.async_copy_global_to_shared(b_desc, [off_n, i * BLOCK_K], bars.index(i), b_bufs.index(i), pred=ready)

    acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.int32, layout=layout)
    for ki in range(k_tiles):
        s = ki % STAGES
        mbarrier.wait(bars.index(s), (ki // STAGES) & 1)
        acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc, is_async=True)
        # the product of step ki - 1 is done once at most this one is in flight: its buffers are free
        acc, _, _ = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_bufs.index(s), b_bufs.index(s)))
        nxt = ki + STAGES - 1
        ns = nxt % STAGES
        more = nxt < k_tiles
        mbarrier.expect(bars.index(ns), step_bytes, pred=more)
        tma.async_copy_global_to_shared(a_desc, [off_m, nxt * BLOCK_K], bars.index(ns), a_bufs.index(ns), pred=more)
        tma.async_copy_global_to_shared(b_desc, [off_n, nxt * BLOCK_K], bars.index(ns), b_bufs.index(ns), pred=more)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))

    rows = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
    cols = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    out = _epilogue(acc, rows, cols, M, N, scale_ptr, bias_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr, out_scale,
                    HAS_BIAS, ACT, OUT_Q, RESIDUAL, c_desc.dtype)
    c_smem = gl.allocate_shared_memory(c_desc.dtype, [BLOCK_M, BLOCK_N], c_desc.layout)
    c_smem.store(out)
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [off_m, off_n], c_smem)
    tma.store_wait(pendings=0)




def descriptor(t):
    """A TMA descriptor of t; its block shape and layout are set per config (`_blocks`)."""
    block = [1] * t.dim()
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, _GL_TYPES[str(t.dtype)]))


def qgemm_async(a, w, out, col_scale, bias, res_args, out_scale, flags, m_bucket):
    """`qgemm_async_kernel` on a [M, K], w [N, K] (int8), out [M, N]; `flags`: HAS_BIAS, ACT, OUT_Q,
    RESIDUAL; res_args: the four residual pointers (placeholders where unused)."""
    m, k = a.shape
    n = w.shape[0]
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    qgemm_async_kernel[grid](descriptor(a), descriptor(w), descriptor(out), col_scale, bias, *res_args, m, n, k,
                             out_scale, M_BUCKET=m_bucket, **flags)
