"""The int8 GEMM of `lowbit` on Hopper, written in Gluon (Triton's lower-level dialect) as a
warp-specialized "ping-pong" kernel: one program per SM, a loader warp that moves the operand
tiles by TMA, and two math warpgroups that take the program's output tiles in turn, so that while
one runs a tile's epilogue (dequantize, bias, GELU, re-quantize or residual add) the other's
products keep the tensor cores busy.

Why not Triton: Triton 3.6's software pipeliner keeps a `wgmma` in flight across K steps only when
its accumulator is fp32 (WGMMAPipeline.cpp, "Rule 2.1"); int8 sums are int32, so
`lowbit_triton.qgemm_tma_kernel` waits for each int8 product before it issues the next (its PTX
has `wgmma.wait_group 0` in the K loop, the fp8 build `wait_group 1`). And at BERT's K = 768 a
tile's epilogue costs about as much as its products, which one warpgroup per tile serialises.
Here each warpgroup keeps one product in flight (`warpgroup_mma_wait(1)`), and the two warpgroups
overlap one's epilogue with the other's products. `lowbit.qgemm` times this kernel against the
Triton one per layer shape and runs the faster (Triton keeps BERT's FFN down-projection, whose
K = 3072 leaves little epilogue to hide: bench/int8_async.py).

The epilogue is `lowbit_triton.epilogue` + `add_residual` (FAST), written again with Gluon's
explicit layouts: same arithmetic and rounding, checked against the Triton kernel by the CUDA
tests. The residual tile is loaded by TMA while its tile's products run.
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
def barriers(COUNT: gl.constexpr):
    """COUNT mbarriers in shared memory, each initialised to wait for one arrival."""
    bars = gl.allocate_shared_memory(gl.int64, [COUNT, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(COUNT):
        mbarrier.init(bars.index(i), count=1)
    return bars


@gluon.jit
def ring_free_slot(empty, step, STAGES: gl.constexpr):
    """The loader's side of the operand ring: wait until the slot of K step `step` has been read
    (the math warpgroup arrived on its `empty` barrier; a fresh ring passes at once); its index."""
    s = step % STAGES
    mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)
    return s


@gluon.jit
def ring_filled_slot(ready, step, STAGES: gl.constexpr):
    """The math side: wait until the TMA loads of K step `step` have landed; the slot's index."""
    s = step % STAGES
    mbarrier.wait(ready.index(s), (step // STAGES) & 1)
    return s


@gluon.jit
def ring_release(empty, step, STAGES: gl.constexpr, pred=True):
    """The math side: the products that read K step `step` are done; the loader may refill its slot."""
    mbarrier.arrive(empty.index(step % STAGES), count=1, pred=pred)


@gluon.jit
def wait_turn(done, WHICH: gl.constexpr, j):
    """Products run in tile (item) order: wait until the other warpgroup has issued those of j - 1.
    Then a ring slot's barrier is never two fills ahead of the step that waits on it (without
    this the second warpgroup passed on a stale phase and the kernel crashed: docs/gpu.md)."""
    mbarrier.wait(done.index(1 - WHICH), ((j - 1) // 2) & 1, pred=j > 0)


@gluon.jit
def round_to_int8(y):
    """y (fp32) rounded half to even and saturated to int8 on the FP32 pipe: lowbit_triton.round_to_int8."""
    y = gl.minimum(gl.maximum(y, -128.0), 127.0)
    return (y + 12582912.0).to(gl.int32, bitcast=True).to(gl.int8)


@gluon.jit
def _epilogue(acc, r, mean, rstd, cols, N, scale_ptr, bias_ptr, gamma_ptr, beta_ptr, out_scale, HAS_BIAS: gl.constexpr,
              ACT: gl.constexpr, OUT_Q: gl.constexpr, RESIDUAL: gl.constexpr, out_ty: gl.constexpr):
    """`lowbit_triton.epilogue` (FAST) then `add_residual`, on the accumulator's own layout; r, mean
    and rstd: the residual tile and its rows' norm statistics (unused where RESIDUAL is 0)."""
    y = acc.to(gl.float32) * gl.load(scale_ptr + cols, mask=cols < N, other=0.0)[None, :]
    if HAS_BIAS:
        y += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)[None, :]
    if ACT == 1:
        y = gl.maximum(y, 0.0)
    if ACT == 2:
        y = 0.5 * y * (1.0 + _fast_tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))
    if OUT_Q != 0:
        y = y * (1.0 / out_scale)
    if OUT_Q == 1:
        return round_to_int8(y)
    if OUT_Q == 2:
        return gl.minimum(gl.maximum(y, -448.0), 448.0).to(gl.float8e4nv)
    out = y.to(out_ty)
    if RESIDUAL != 0:
        if RESIDUAL == 2:
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
    for name, block in (("a_desc", [bm, bk]), ("b_desc", [bn, bk]), ("c_desc", [bm, bn]), ("r_desc", [bm, bn])):
        desc = nargs[name]
        desc.block_shape = block
        desc.layout = gl.NVMMASharedLayout.get_default_for(block, _GL_TYPES[str(desc.base.dtype)])


SM_SHARED_BYTES = 227 * 1024  # the most one program may have on Hopper


def _fitting(configs, named_args, **kwargs):
    """The configs whose buffers fit in shared memory (the operand ring, and for each warpgroup an
    output tile and a residual tile) and, with a residual, whose epilogue fits in a warpgroup's
    registers: 128-wide tiles spill there (ptxas: 2 KB at 232 registers a thread), 64-wide ones do
    not. With TRIMTAB_QUICK_TUNE=1 (the test suite) only the first that fits."""
    residual = kwargs.get("RESIDUAL", named_args.get("RESIDUAL"))
    tile_bytes = named_args["c_desc"].base.element_size() + (named_args["r_desc"].base.element_size() if residual else 0)
    fitting = []
    for config in configs:
        c = config.kwargs
        ring = c["STAGES"] * (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"]
        if ring + 2 * c["BLOCK_M"] * c["BLOCK_N"] * tile_bytes + 256 <= SM_SHARED_BYTES and not (
                residual and c["BLOCK_N"] > 64):
            fitting.append(config)
    return fitting[:1] if os.environ.get("TRIMTAB_QUICK_TUNE") == "1" else fitting


@gluon.jit
def _tile_origin(j, first, programs, num_m, num_n, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                 GROUP_M: gl.constexpr):
    """The top-left element of this program's j-th tile (tiles first, first + programs, ...), in
    grouped order (lowbit_triton.tile_of): neighbouring tiles share A rows in L2."""
    tile = first + j * programs
    width = GROUP_M * num_n
    first_m = (tile // width) * GROUP_M
    size_m = gl.minimum(num_m - first_m, GROUP_M)
    return (first_m + (tile % width) % size_m) * BLOCK_M, ((tile % width) // size_m) * BLOCK_N


@gluon.jit
def _schedule(M, N, K, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr):
    """(num_m, num_n, first tile, programs, K steps a tile, this program's tile count)."""
    num_m, num_n = gl.cdiv(M, BLOCK_M), gl.cdiv(N, BLOCK_N)
    first, programs = gl.program_id(0), gl.num_programs(0)
    return num_m, num_n, first, programs, gl.cdiv(K, BLOCK_K), gl.cdiv(num_m * num_n - first, programs)


@gluon.jit
def _loader(descs, bufs, bars, M, N, K, RESIDUAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
               BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """One warp: the TMA loads of every K step of this program's tiles, in order, into the ring
    (slot freed by the warpgroup that read it), and each tile's residual into its warpgroup's buffer."""
    a_desc, b_desc, c_desc, r_desc = descs
    a_bufs, b_bufs, c_bufs, r_bufs = bufs
    ready, empty, r_ready, r_empty, done = bars
    num_m, num_n, first, programs, k_tiles, tiles = _schedule(M, N, K, BLOCK_M, BLOCK_N, BLOCK_K)
    step_bytes: gl.constexpr = a_desc.block_type.nbytes + b_desc.block_type.nbytes
    for j in range(tiles):
        off_m, off_n = _tile_origin(j, first, programs, num_m, num_n, BLOCK_M, BLOCK_N, 8)
        if RESIDUAL != 0:
            mbarrier.wait(r_empty.index(j % 2), ((j // 2) & 1) ^ 1)
            mbarrier.expect(r_ready.index(j % 2), r_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(r_desc, [off_m, off_n], r_ready.index(j % 2), r_bufs.index(j % 2))
        for ki in range(k_tiles):
            step = j * k_tiles + ki
            s = ring_free_slot(empty, step, STAGES)
            mbarrier.expect(ready.index(s), step_bytes)
            tma.async_copy_global_to_shared(a_desc, [off_m, ki * BLOCK_K], ready.index(s), a_bufs.index(s))
            tma.async_copy_global_to_shared(b_desc, [off_n, ki * BLOCK_K], ready.index(s), b_bufs.index(s))


@gluon.jit
def _math(WHICH: gl.constexpr, descs, bufs, bars, scale_ptr, bias_ptr, stats_ptr, gamma_ptr, beta_ptr, M, N, K,
             out_scale, HAS_BIAS: gl.constexpr, ACT: gl.constexpr, OUT_Q: gl.constexpr, RESIDUAL: gl.constexpr,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """One warpgroup: the products and epilogue of this program's tiles WHICH, WHICH + 2, ... While
    it runs an epilogue the other warpgroup's products keep the tensor cores busy."""
    a_desc, b_desc, c_desc, r_desc = descs
    a_bufs, b_bufs, c_bufs, r_bufs = bufs
    ready, empty, r_ready, r_empty, done = bars
    num_m, num_n, first, programs, k_tiles, tiles = _schedule(M, N, K, BLOCK_M, BLOCK_N, BLOCK_K)
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, _instr_n(BLOCK_N), 32])
    c_smem = c_bufs.index(WHICH)
    for j in range(WHICH, tiles, 2):
        acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.int32, layout=layout)
        wait_turn(done, WHICH, j)
        for ki in range(k_tiles):
            step = j * k_tiles + ki
            s = ring_filled_slot(ready, step, STAGES)
            acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            # the step before's product is done: its slot can be refilled
            ring_release(empty, step + STAGES - 1, STAGES, ki > 0)
        mbarrier.arrive(done.index(WHICH), count=1)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        ring_release(empty, j * k_tiles + k_tiles - 1, STAGES)

        off_m, off_n = _tile_origin(j, first, programs, num_m, num_n, BLOCK_M, BLOCK_N, 8)
        rows = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
        cols = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
        r = acc  # placeholders where there is no residual
        mean = rows.to(gl.float32)
        rstd = mean
        if RESIDUAL != 0:
            if RESIDUAL == 2:
                mean = gl.load(stats_ptr + rows.to(gl.int64) * 2, mask=rows < M, other=0.0)
                rstd = gl.load(stats_ptr + rows.to(gl.int64) * 2 + 1, mask=rows < M, other=0.0)
            mbarrier.wait(r_ready.index(WHICH), (j // 2) & 1)
            r = r_bufs.index(WHICH).load(layout)
            fence_async_shared()  # these reads before the loader's next TMA write of the buffer
            mbarrier.arrive(r_empty.index(WHICH), count=1)
        out = _epilogue(acc, r, mean, rstd, cols, N, scale_ptr, bias_ptr, gamma_ptr, beta_ptr, out_scale, HAS_BIAS,
                        ACT, OUT_Q, RESIDUAL, c_desc.dtype)
        tma.store_wait(pendings=0)  # this warpgroup's previous store has left c_smem
        c_smem.store(out)
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [off_m, off_n], c_smem)
    tma.store_wait(pendings=0)


# (BLOCK_M, BLOCK_N, BLOCK_K, STAGES) of each warpgroup's tiles, autotuned per layer shape: the
# configs that were fastest on some BERT layer on an H100, each tile config tried directly (seventh
# session, docs/gpu.md "Runs 20-21"); (128, 128, 64, 6), (128, 64, 128, 4) and (128, 64, 64, 8) never
# were (each 4% or more behind the best) and cost compile and tuning time per engine.
TILES = [(128, 128, 128, 4), (128, 64, 128, 6), (128, 128, 128, 3)]


@triton.autotune(configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "STAGES": s},
                                        num_warps=4, maxnreg=168, pre_hook=_blocks) for bm, bn, bk, s in TILES],
                 key=["M_BUCKET", "N", "K", "ACT", "OUT_Q", "RESIDUAL"], prune_configs_by={"early_config_prune": _fitting})
@gluon.jit
def qgemm_pingpong_kernel(a_desc, b_desc, c_desc, r_desc, scale_ptr, bias_ptr, stats_ptr, gamma_ptr, beta_ptr, M, N,
                          K, out_scale, HAS_BIAS: gl.constexpr, ACT: gl.constexpr, OUT_Q: gl.constexpr,
                          RESIDUAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                          STAGES: gl.constexpr, num_warps: gl.constexpr, M_BUCKET=1):
    """act(A @ B^T * scale + bias) [+ residual] in [BLOCK_M, BLOCK_N] output tiles: A [M, K] and
    B [N, K] int8 through TMA descriptors (block shapes set per config: `_blocks`), int32 sums.
    Program p takes tiles p, p + programs, ...; its loader warp (`_loader`) fills a ring of STAGES
    operand buffers, and its two math warpgroups (`_math`) take the tiles in turn, each with its own
    output tile (stored by TMA) and residual tile (loaded by TMA) in shared memory."""
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
    c_bufs = gl.allocate_shared_memory(c_desc.dtype, [2, BLOCK_M, BLOCK_N], c_desc.layout)
    r_shape: gl.constexpr = [2, BLOCK_M, BLOCK_N] if RESIDUAL != 0 else [1, 8, 8]  # (a token buffer: unused)
    r_bufs = gl.allocate_shared_memory(r_desc.dtype, r_shape, r_desc.layout)
    ready, empty = barriers(STAGES), barriers(STAGES)
    r_ready, r_empty, done = barriers(2), barriers(2), barriers(2)
    descs = (a_desc, b_desc, c_desc, r_desc)
    bufs = (a_bufs, b_bufs, c_bufs, r_bufs)
    bars = (ready, empty, r_ready, r_empty, done)
    gl.warp_specialize([
        (_math, (0, descs, bufs, bars, scale_ptr, bias_ptr, stats_ptr, gamma_ptr, beta_ptr, M, N, K, out_scale,
                    HAS_BIAS, ACT, OUT_Q, RESIDUAL, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)),
        (_math, (1, descs, bufs, bars, scale_ptr, bias_ptr, stats_ptr, gamma_ptr, beta_ptr, M, N, K, out_scale,
                    HAS_BIAS, ACT, OUT_Q, RESIDUAL, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)),
        (_loader, (descs, bufs, bars, M, N, K, RESIDUAL, BLOCK_M, BLOCK_N, BLOCK_K, STAGES))],
        [4, 1], [232, 40])  # warps and registers a thread of the second warpgroup and of the loader


def descriptor(t):
    """A TMA descriptor of t; its block shape and layout are set per config (`_blocks`)."""
    block = [1] * t.dim()
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, _GL_TYPES[str(t.dtype)]))


def qgemm_pingpong(a, w, out, col_scale, bias, res_args, out_scale, flags, m_bucket, sms):
    """`qgemm_pingpong_kernel` on a [M, K], w [N, K] (int8), out [M, N], one program per SM (at most
    one per tile); `flags`: HAS_BIAS, ACT, OUT_Q, RESIDUAL; res_args: the residual, stats, gamma and
    beta tensors (placeholders where unused)."""
    m, k = a.shape
    n = w.shape[0]
    grid = lambda meta: (min(sms, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)  # noqa: E731
    qgemm_pingpong_kernel[grid](*_descriptors(a, w, out, res_args, flags).values(), col_scale, bias, *res_args[1:],
                                m, n, k, out_scale, M_BUCKET=m_bucket, **flags)


def config_runs(a, w, out, col_scale, bias, res_args, out_scale, flags, sms) -> list:
    """(config, run) for each tile config that fits the layer `qgemm_pingpong` would run: `run()`
    launches the kernel with that config, past the autotuner (the CUDA tests check each config's
    outputs and bench/pingpong_configs.py times them)."""
    m, k = a.shape
    n = w.shape[0]
    descs = _descriptors(a, w, out, res_args, flags)
    runs = []
    for config in _fitting(qgemm_pingpong_kernel.configs, descs, **flags):
        meta = dict(config.kwargs)
        grid = (min(sms, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)

        def run(meta=meta, grid=grid, config=config):
            _blocks({**descs, **meta})  # the descriptors' blocks for this config
            qgemm_pingpong_kernel.fn[grid](*descs.values(), col_scale, bias, *res_args[1:], m, n, k, out_scale, **flags,
                                           **meta, num_warps=config.num_warps, maxnreg=config.maxnreg)

        runs.append((config, run))
    return runs


def _descriptors(a, w, out, res_args, flags) -> dict:
    """The kernel's four TMA descriptors; without a residual the output's stands in (never read)."""
    m, n = out.shape
    residual = res_args[0].reshape(m, n) if flags["RESIDUAL"] else out
    return {"a_desc": descriptor(a), "b_desc": descriptor(w), "c_desc": descriptor(out), "r_desc": descriptor(residual)}
