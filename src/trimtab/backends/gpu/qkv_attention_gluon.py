"""`qkv_attention_triton`'s int8 kernel on Hopper, written in Gluon as a warp-specialized
"ping-pong" kernel: the Q/K/V projection of one sequence and head, then its attention, with the
int8 products of one warpgroup overlapping the other's attention.

Why: Triton keeps an int8 tensor-core product in flight only until the next K step starts (its
pipeliner waits for every int32-accumulated `wgmma` before issuing the next: `lowbit_gluon.py`
says why), and the Triton kernel's attention runs after its products on the same warps. Here one
program per SM has a loader warp that moves each K step's x tile and the head's three weight tiles
by TMA into a ring, and two math warpgroups that take the program's (sequence, head) items in
turn: each keeps its products in flight while the next K step's tiles arrive, then runs the
softmax and the two fp16 attention products while the other warpgroup's projection runs.

Same arithmetic as the Triton kernel: q, k and v are `_project`'s (int32 sums, times the column
scales, plus the bias, rounded to fp16), the scores and softmax are `_attend`'s (exp2 with the
scale in log2 units, the mask clamped at -1e30, keys past the sequence at -inf), the output is
`attention_triton.output`'s. The CUDA tests compare the two kernels.

Only int8 x and weights, fp16 q/k/v, head size 32 or 64 (three int32 [128, head] accumulators a
warpgroup), sequences of at most 128 tokens; `supported` says whether a call fits.
"""

import os

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from trimtab.backends.gpu.lowbit_gluon import (SM_SHARED_BYTES, barriers, ring_filled_slot, ring_free_slot,
                                              ring_release, round_to_int8, wait_turn)

LOG2E = gl.constexpr(1.4426950408889634)


@gluon.jit
def _items(n_items):
    """(first item, programs, this program's item count): items first, first + programs, ..."""
    first, programs = gl.program_id(0), gl.num_programs(0)
    return first, programs, gl.cdiv(n_items - first, programs)


@gluon.jit
def _loader(x_desc, w_desc, m_desc, bufs, bars, H, K, n_items, off_q, off_k, off_v, smb, smh, MASK: gl.constexpr,
            D: gl.constexpr, BLOCK_S: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """One warp: for each of this program's items, each K step's x tile (the sequence's rows) and
    the head's q, k and v weight tiles, into the ring slot the math warpgroups freed; with a mask
    tile (MASK 2), the item's [S, S] scores mask into its warpgroup's buffer."""
    x_bufs, wq_bufs, wk_bufs, wv_bufs, kv_bufs, o_bufs, m_bufs = bufs
    ready, empty, done, m_ready, m_empty = bars
    first, programs, items = _items(n_items)
    k_tiles = gl.cdiv(K, BLOCK_K)
    step_bytes: gl.constexpr = x_desc.block_type.nbytes + 3 * w_desc.block_type.nbytes
    for j in range(items):
        item = first + j * programs
        b, h = item // H, item % H
        row, head = b * BLOCK_S, h * D
        if MASK == 2:
            mbarrier.wait(m_empty.index(j % 2), ((j // 2) & 1) ^ 1)
            mbarrier.expect(m_ready.index(j % 2), m_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(m_desc, [(b * smb + h * smh) // BLOCK_S, 0], m_ready.index(j % 2),
                                            m_bufs.index(j % 2))
        for ki in range(k_tiles):
            step = j * k_tiles + ki
            s = ring_free_slot(empty, step, STAGES)
            mbarrier.expect(ready.index(s), step_bytes)
            k0 = ki * BLOCK_K
            tma.async_copy_global_to_shared(x_desc, [row, k0], ready.index(s), x_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [off_q + head, k0], ready.index(s), wq_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [off_k + head, k0], ready.index(s), wk_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [off_v + head, k0], ready.index(s), wv_bufs.index(s))


@gluon.jit
def _project(acc, scale_ptr, bias_ptr, first, HAS_SCALE: gl.constexpr, HAS_BIAS: gl.constexpr, D: gl.constexpr,
             layout: gl.constexpr):
    """qkv_attention_triton._project: the int32 sums times the scales of columns first, first + 1,
    ..., plus their bias, in fp16."""
    y = acc.to(gl.float32)
    if HAS_SCALE:
        y = y * _column_vector(scale_ptr + first, D, layout)[None, :]
    if HAS_BIAS:
        y += _column_vector(bias_ptr + first, D, layout)[None, :]
    return y.to(gl.float16)


@gluon.jit
def _column_vector(ptr, D: gl.constexpr, layout: gl.constexpr):
    """D values from ptr as fp32, along the columns of `layout`: loaded a value or two a thread,
    then moved there (in the accumulator's own layout each thread would hold a pointer per column,
    registers the warpgroup needs for its accumulators)."""
    flat: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    return gl.convert_layout(gl.load(ptr + gl.arange(0, D, layout=flat)).to(gl.float32), gl.SliceLayout(0, layout))


@gluon.jit
def _products(WHICH: gl.constexpr, j, bufs, bars, K, layout: gl.constexpr, BLOCK_S: gl.constexpr,
              D: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """The item's three [BLOCK_S, D] int32 sums x @ W^T (q, k and v rows), each K step's products
    left in flight while the next step's tiles are waited for."""
    x_bufs, wq_bufs, wk_bufs, wv_bufs, kv_bufs, o_bufs, m_bufs = bufs
    ready, empty, done, m_ready, m_empty = bars
    k_tiles = gl.cdiv(K, BLOCK_K)
    acc_q = gl.zeros((BLOCK_S, D), dtype=gl.int32, layout=layout)
    acc_k = gl.zeros((BLOCK_S, D), dtype=gl.int32, layout=layout)
    acc_v = gl.zeros((BLOCK_S, D), dtype=gl.int32, layout=layout)
    wait_turn(done, WHICH, j)
    for ki in range(k_tiles):
        step = j * k_tiles + ki
        s = ring_filled_slot(ready, step, STAGES)
        x = x_bufs.index(s)
        acc_q = warpgroup_mma(x, wq_bufs.index(s).permute((1, 0)), acc_q, is_async=True)
        acc_k = warpgroup_mma(x, wk_bufs.index(s).permute((1, 0)), acc_k, is_async=True)
        acc_v = warpgroup_mma(x, wv_bufs.index(s).permute((1, 0)), acc_v, is_async=True)
        acc_q, acc_k, acc_v = warpgroup_mma_wait(num_outstanding=3, deps=(acc_q, acc_k, acc_v))
        # the step before's products are done: its slot can be refilled
        ring_release(empty, step + STAGES - 1, STAGES, ki > 0)
    mbarrier.arrive(done.index(WHICH), count=1)
    acc_q, acc_k, acc_v = warpgroup_mma_wait(num_outstanding=0, deps=(acc_q, acc_k, acc_v))
    ring_release(empty, j * k_tiles + k_tiles - 1, STAGES)
    return acc_q, acc_k, acc_v


@gluon.jit
def _math(WHICH: gl.constexpr, o_desc, bufs, bars, scale_ptr, bias_ptr, m_ptr, H, K, n_items, off_q, off_k,
          off_v, qk_scale, out_scale, smb, smh, smk, HAS_SCALE: gl.constexpr, HAS_BIAS: gl.constexpr,
          MASK: gl.constexpr, OUT_Q: gl.constexpr, D: gl.constexpr, BLOCK_S: gl.constexpr,
          BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """One warpgroup: the items WHICH, WHICH + 2, ... of this program: their projections, then
    softmax(q k^T * scale + mask) v written (or quantized) to the item's [S, D] place in the
    [B, S, H, D] output."""
    kv_bufs, o_smem = bufs[4], bufs[5].index(WHICH)
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, D, 32])
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_S, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    k_smem, v_smem = kv_bufs.index(2 * WHICH), kv_bufs.index(2 * WHICH + 1)
    first, programs, items = _items(n_items)
    for j in range(WHICH, items, 2):
        item = first + j * programs
        b, h = item // H, item % H
        acc_q, acc_k, acc_v = _products(WHICH, j, bufs, bars, K, acc_layout, BLOCK_S, D, BLOCK_K, STAGES)
        # k and v first: each accumulator's registers are free once its tile is in shared memory
        k_smem.store(_project(acc_k, scale_ptr, bias_ptr, off_k + h * D, HAS_SCALE, HAS_BIAS, D, acc_layout))
        v_smem.store(_project(acc_v, scale_ptr, bias_ptr, off_v + h * D, HAS_SCALE, HAS_BIAS, D, acc_layout))
        q = _project(acc_q, scale_ptr, bias_ptr, off_q + h * D, HAS_SCALE, HAS_BIAS, D, acc_layout)
        fence_async_shared()
        q = gl.convert_layout(q, gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2))
        s = warpgroup_mma(q, k_smem.permute((1, 0)), gl.zeros((BLOCK_S, BLOCK_S), gl.float32, s_layout))
        s = s * qk_scale  # log2 units: softmax by exp2
        if MASK == 1:
            s = gl.maximum(s + _mask_row(m_ptr + b * smb + h * smh, smk, s_layout, BLOCK_S)[None, :], -1.0e30)
        if MASK == 2:
            mbarrier.wait(bars[3].index(WHICH), (j // 2) & 1)
            mask = bufs[6].index(WHICH).load(s_layout)
            fence_async_shared()  # these reads before the loader's next TMA write of the buffer
            mbarrier.arrive(bars[4].index(WHICH), count=1)
            s = gl.maximum(s + mask.to(gl.float32) * LOG2E, -1.0e30)
        p = gl.exp2(s - gl.max(s, 1)[:, None])
        total = gl.sum(p, 1)
        p = gl.convert_layout(p.to(gl.float16), gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2))
        o = warpgroup_mma(p, v_smem, gl.zeros((BLOCK_S, D), gl.float32, o_layout))
        o = o / gl.convert_layout(total, gl.SliceLayout(1, o_layout))[:, None]
        tma.store_wait(pendings=0)  # this warpgroup's previous output tile has left o_smem
        o_smem.store(_output(o, out_scale, OUT_Q))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [b * BLOCK_S, h * D], o_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _mask_row(ptr, stride, layout: gl.constexpr, BLOCK_S: gl.constexpr):
    """The additive mask of one row of keys, in log2 units, as a vector along the scores' keys.
    Loaded one value a thread and then moved into the scores' layout: loaded there, each thread
    would hold 32 64-bit pointers, registers the warpgroup does not have to spare."""
    flat: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    row = gl.load(ptr + gl.arange(0, BLOCK_S, layout=flat) * stride).to(gl.float32) * LOG2E
    return gl.convert_layout(row, gl.SliceLayout(0, layout))


@gluon.jit
def _output(o, out_scale, OUT_Q: gl.constexpr):
    """attention_triton.output: int8 (round half to even on the FP32 pipe, saturate), else fp16."""
    if OUT_Q == 1:
        y = round_to_int8(o * (1.0 / out_scale))
    else:
        y = o.to(gl.float16)
    return y


def _blocks(nargs):
    """The descriptors' block shapes and shared layouts for the config being run."""
    bk, d = nargs["BLOCK_K"], nargs["D"]
    for name, block in (("x_desc", [nargs["BLOCK_S"], bk]), ("w_desc", [d, bk])):
        nargs[name].block_shape = block
        nargs[name].layout = gl.NVMMASharedLayout.get_default_for(block, gl.int8)


def _fitting(configs, named_args, **kwargs):
    """The autotuner's configs that `fitting_configs` keeps. With TRIMTAB_QUICK_TUNE=1 (the test
    suite) only the first."""
    fits = fitting_configs(kwargs["BLOCK_S"], kwargs["D"], named_args["K"], named_args["o_desc"].base.element_size(),
                           kwargs["MASK"])
    fitting = [c for c in configs if (c.kwargs["BLOCK_K"], c.kwargs["STAGES"]) in fits]
    return fitting[:1] if os.environ.get("TRIMTAB_QUICK_TUNE") == "1" else fitting


def fitting_configs(block_s: int, d: int, k: int, out_size: int, mask: int) -> list[tuple[int, int]]:
    """The (BLOCK_K, STAGES) of CONFIGS with BLOCK_K dividing K whose ring (x and three weight
    tiles a K step), k, v and output tiles and (mask 2) mask tiles, two of each per program, fit
    in shared memory."""
    tiles = 2 * block_s * (2 * d * 2 + d * out_size) + (2 * block_s * block_s * 2 if mask == 2 else 0)
    return [(bk, stages) for bk, stages in CONFIGS
            if k % bk == 0 and stages * (block_s + 3 * d) * bk + tiles + 1024 <= SM_SHARED_BYTES]


# (BLOCK_K, STAGES): K step and ring depth, autotuned per shape class (a [128, 128] mask tile a
# warpgroup leaves room for 4 K steps of 64 or 2 of 128)
CONFIGS = [(128, 3), (64, 6), (64, 4), (128, 2)]


@triton.autotune(configs=[triton.Config({"BLOCK_K": bk, "STAGES": s}, num_warps=4, maxnreg=168, pre_hook=_blocks)
                          for bk, s in CONFIGS],
                 key=["BLOCK_S", "K", "D", "OUT_Q", "MASK"], prune_configs_by={"early_config_prune": _fitting})
@gluon.jit
def qkv_attention_pingpong_kernel(x_desc, w_desc, o_desc, m_desc, scale_ptr, bias_ptr, m_ptr, H, K, n_items, off_q,
                                  off_k, off_v, qk_scale, out_scale, smb, smh, smk, HAS_SCALE: gl.constexpr,
                                  HAS_BIAS: gl.constexpr, MASK: gl.constexpr, OUT_Q: gl.constexpr,
                                  D: gl.constexpr, BLOCK_S: gl.constexpr, BLOCK_K: gl.constexpr,
                                  STAGES: gl.constexpr, num_warps: gl.constexpr):
    """Items (sequence b, head h) = divmod(item, H), item = program, program + programs, ...: x
    [B * S, K] and w [3 * hidden, K] int8, the output [B * S, H * D] and (MASK 2) the mask's
    [S, S] tiles through TMA descriptors (S = BLOCK_S; x and w blocks set per config: `_blocks`);
    MASK 1: one row of keys a sequence and head, read at m_ptr + b * smb + h * smh. The loader
    warp (`_loader`) fills a ring of STAGES K steps, and two math warpgroups (`_math`) take the
    items in turn, each with its own k, v, output and mask tiles in shared memory."""
    x_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_S, BLOCK_K], x_desc.layout)
    wq_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, D, BLOCK_K], w_desc.layout)
    wk_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, D, BLOCK_K], w_desc.layout)
    wv_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, D, BLOCK_K], w_desc.layout)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_S, D], gl.float16)
    kv_bufs = gl.allocate_shared_memory(gl.float16, [4, BLOCK_S, D], kv_layout)
    o_bufs = gl.allocate_shared_memory(o_desc.dtype, [2, BLOCK_S, D], o_desc.layout)
    m_shape: gl.constexpr = [2, BLOCK_S, BLOCK_S] if MASK == 2 else [1, 8, 8]  # (a token buffer: unused)
    m_bufs = gl.allocate_shared_memory(m_desc.dtype, m_shape, m_desc.layout)
    ready, empty = barriers(STAGES), barriers(STAGES)
    done, m_ready, m_empty = barriers(2), barriers(2), barriers(2)
    bufs = (x_bufs, wq_bufs, wk_bufs, wv_bufs, kv_bufs, o_bufs, m_bufs)
    bars = (ready, empty, done, m_ready, m_empty)
    gl.warp_specialize([
        (_math, (0, o_desc, bufs, bars, scale_ptr, bias_ptr, m_ptr, H, K, n_items, off_q, off_k, off_v, qk_scale,
                 out_scale, smb, smh, smk, HAS_SCALE, HAS_BIAS, MASK, OUT_Q, D, BLOCK_S, BLOCK_K, STAGES)),
        (_math, (1, o_desc, bufs, bars, scale_ptr, bias_ptr, m_ptr, H, K, n_items, off_q, off_k, off_v, qk_scale,
                 out_scale, smb, smh, smk, HAS_SCALE, HAS_BIAS, MASK, OUT_Q, D, BLOCK_S, BLOCK_K, STAGES)),
        (_loader, (x_desc, w_desc, m_desc, bufs, bars, H, K, n_items, off_q, off_k, off_v, smb, smh, MASK, D,
                   BLOCK_S, BLOCK_K, STAGES))],
        [4, 1], [232, 40])  # warps and registers a thread of the second warpgroup and of the loader


def mask_kind(mask, stand_in, strides: list[int], s: int) -> int:
    """0: no mask; 1: one row of keys for every query (stride 0 along queries); 2: [S, S] tiles of
    rows lying S elements apart, whose starts (b * smb + h * smh) are whole rows, TMA-loadable
    (fp16, 16-byte aligned: two fp32 tiles would not fit in shared memory beside the ring); -1:
    none of these (the Triton kernel reads it)."""
    import torch

    if mask is stand_in:
        return 0
    smb, smh, smq, smk = strides
    if smq == 0:
        return 1
    if (smk == 1 and smq == s and smb % s == 0 and smh % s == 0 and mask.dtype == torch.float16
            and mask.data_ptr() % 16 == 0 and (s * mask.element_size()) % 16 == 0):
        return 2
    return -1


def supported(x, w, heads: int, mask, strides: list[int], half, int8_out: bool) -> bool:
    """Whether `qkv_attention_pingpong` runs these operands (beyond qkv_attention_triton.supported):
    int8 on Hopper with fp16 q/k/v, head size 32 or 64, K a multiple of 64, 64 or 128 tokens,
    a mask (mask, strides: `attention_triton.mask_operand`'s) of a kind it reads (`mask_kind`),
    and some config whose buffers fit in shared memory (an fp16 output beside [S, S] mask tiles
    may leave none)."""
    import torch

    if x.dtype != torch.int8 or w.dtype != torch.int8 or half != torch.float16:
        return False
    if torch.cuda.get_device_capability(x.device)[0] != 9:
        return False
    s, d, kind = x.shape[1], (w.shape[0] // 3) // heads, mask_kind(mask, x, strides, x.shape[1])
    return (d in (32, 64) and x.shape[-1] % 64 == 0 and s in (64, 128) and kind >= 0
            and bool(fitting_configs(s, d, x.shape[-1], 1 if int8_out else 2, kind)))


def qkv_attention_pingpong(x, w, col_scale, bias, offsets, heads, mask, strides, qk_scale, out, out_q, sms,
                           config=None):
    """The kernel on x [B, S, K] and w [3 * hidden, K] (int8), writing out [B, S, heads, head]
    (int8 with out_q (scale, dtype), else fp16): one program per SM, at most one per item. mask
    and strides: `attention_triton.mask_operand`'s (x where there is no mask).
    `config` (tests, benches): these (BLOCK_K, STAGES) instead of the autotuned ones."""
    b, s, k = x.shape
    d = (w.shape[0] // 3) // heads
    x_desc, w_desc = _descriptor(x.view(b * s, k), [s, 64]), _descriptor(w, [d, 64])
    o_desc = _descriptor(out.view(b * s, heads * d), [s, d])
    kind = mask_kind(mask, x, strides, s)
    m_desc = o_desc  # stands in where no mask tile is read
    if kind == 2:  # the mask's storage as rows of S, from the view's first element
        rows = (mask.untyped_storage().nbytes() // mask.element_size() - mask.storage_offset()) // s
        m_desc = _descriptor(mask.as_strided((rows, s), (s, 1)), [s, s])
    n_items = b * heads
    args = (x_desc, w_desc, o_desc, m_desc, col_scale if col_scale is not None else x,
            bias if bias is not None else x, mask, heads, k, n_items, *offsets, qk_scale, out_q[0] if out_q else 1.0,
            strides[0], strides[1], strides[3])
    flags = dict(HAS_SCALE=col_scale is not None, HAS_BIAS=bias is not None, MASK=kind, OUT_Q=1 if out_q else 0,
                 D=d, BLOCK_S=s)
    grid = (min(sms, n_items),)
    if config is None:
        qkv_attention_pingpong_kernel[grid](*args, **flags)
        return
    meta = {"BLOCK_K": config[0], "STAGES": config[1]}
    _blocks({"x_desc": x_desc, "w_desc": w_desc, "D": d, "BLOCK_S": s, **meta})
    qkv_attention_pingpong_kernel.fn[grid](*args, **flags, **meta, num_warps=4, maxnreg=168)


def _descriptor(t, block):
    import torch

    element = {torch.int8: gl.int8, torch.float16: gl.float16}[t.dtype]
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, element))
