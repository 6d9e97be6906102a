"""A transformer layer's Q/K/V projection and its attention in one Triton kernel, for CUDA.

    q, k, v = split(x @ W^T * col_scale + b)        (8-bit or fp16/bf16 operands; q/k/v rounded
    out     = softmax(q k^T * scale + mask) v        to the half type, as the graph writes them)

One program takes one sequence and one head: it multiplies the sequence's rows of x by that head's
three [head_dim, K] slices of the fused Q/K/V weight (three accumulators sharing each x tile),
rounds q, k and v to the half type as the projection's output would be, and runs the attention on
them while they are still in registers. The projection's output, three [tokens, hidden] half
tensors (75 MB at BERT-base batch 128), is never written to memory nor read back by the attention,
and at sequence length 128 that round trip took longer than the attention itself.

The values match the separate kernels': the projection's epilogue is `lowbit_triton.epilogue`'s
arithmetic (scale, then bias, then the cast), the softmax is the attention kernel's with the whole
key row in one block (`attention_triton.py`).

Only for sequences of at most 128 tokens (the scores of one head stay in registers), head sizes 16
to 128 (powers of two) and K a multiple of 64; `supported` says whether a call fits.
"""

import torch
import triton
import triton.language as tl

from trimtab.backends.gpu.attention_triton import LOG2E, broadcasts_to, mask_operand, output, output_kind
from trimtab.backends.gpu.lowbit_triton import few_configs, mma

# (BLOCK_K, warps, stages), each with q and k as one product or not. With 4 warps the three
# [128, 64] accumulators take all 255 registers a thread can have, no spills, and two programs fit
# one SM: one's attention runs while the other multiplies. On an H100 at BERT-base's shapes these
# beat every 8-warp tile (one program an SM) by 15-25%, and two sequences a program (each weight
# tile serving 256 rows) spilled and lost 20% (bench/results/qkv_attention-2026-11-26-h100.json).
CONFIGS = [(64, 4, 4), (64, 4, 3), (128, 4, 2), (32, 4, 4)]
MAX_SEQUENCE = 128


@triton.jit
def _project(acc, scale_ptr, bias_ptr, cols, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, half: tl.constexpr):
    y = acc.to(tl.float32)
    if HAS_SCALE:
        y = y * tl.load(scale_ptr + cols)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    return y.to(half)


@triton.jit
def _products(x_ptrs, w_ptr, row_ok, q_rows, k_rows, v_rows, K, IS_INT8: tl.constexpr, MERGE_QK: tl.constexpr,
              EVEN_S: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr):
    """The three [BLOCK_S, D] sums x @ W[rows]^T for the q, k and v weight rows of one head. With
    MERGE_QK the q and k rows are one [2D]-wide product (fewer, wider tensor-core instructions, x
    read from shared memory twice instead of three times), split apart after the loop."""
    ks = tl.arange(0, BLOCK_K)
    acc_ty: tl.constexpr = tl.int32 if IS_INT8 else tl.float32
    wv_ptrs = w_ptr + v_rows[None, :] * K + ks[:, None]  # [BLOCK_K, D] slices, K-major
    acc_v = tl.zeros((BLOCK_S, D), acc_ty)
    if MERGE_QK:
        qk_rows = tl.reshape(tl.permute(tl.join(q_rows, k_rows), (1, 0)), (2 * D,))
        wqk_ptrs = w_ptr + qk_rows[None, :] * K + ks[:, None]
        acc_qk = tl.zeros((BLOCK_S, 2 * D), acc_ty)
        for _ in range(tl.cdiv(K, BLOCK_K)):
            a = _rows(x_ptrs, row_ok, EVEN_S)
            acc_qk = mma(a, tl.load(wqk_ptrs), acc_qk, IS_INT8)
            acc_v = mma(a, tl.load(wv_ptrs), acc_v, IS_INT8)
            x_ptrs += BLOCK_K
            wqk_ptrs += BLOCK_K
            wv_ptrs += BLOCK_K
        acc_q, acc_k = tl.split(tl.permute(tl.reshape(acc_qk, (BLOCK_S, 2, D)), (0, 2, 1)))
    else:
        wq_ptrs = w_ptr + q_rows[None, :] * K + ks[:, None]
        wk_ptrs = w_ptr + k_rows[None, :] * K + ks[:, None]
        acc_q = tl.zeros((BLOCK_S, D), acc_ty)
        acc_k = tl.zeros((BLOCK_S, D), acc_ty)
        for _ in range(tl.cdiv(K, BLOCK_K)):
            a = _rows(x_ptrs, row_ok, EVEN_S)
            acc_q = mma(a, tl.load(wq_ptrs), acc_q, IS_INT8)
            acc_k = mma(a, tl.load(wk_ptrs), acc_k, IS_INT8)
            acc_v = mma(a, tl.load(wv_ptrs), acc_v, IS_INT8)
            x_ptrs += BLOCK_K
            wq_ptrs += BLOCK_K
            wk_ptrs += BLOCK_K
            wv_ptrs += BLOCK_K
    return acc_q, acc_k, acc_v


@triton.jit
def _rows(x_ptrs, row_ok, EVEN_S: tl.constexpr):
    if EVEN_S:
        a = tl.load(x_ptrs)
    else:
        a = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
    return a


def _prune(configs, named_args, **kwargs):
    """Tiles that divide K: the K loop is not masked."""
    return few_configs([c for c in configs if named_args["K"] % c.kwargs["BLOCK_K"] == 0], named_args, **kwargs)


@triton.autotune(configs=[triton.Config({"BLOCK_K": bk, "MERGE_QK": merge}, num_warps=w, num_stages=s)
                          for bk, w, s in CONFIGS for merge in (True, False)],
                 key=["BLOCK_S", "K", "D", "IS_INT8", "OUT_Q", "HAS_MASK"],  # tuned per size class, not per length
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _qkv_attention(x_ptr, w_ptr, scale_ptr, bias_ptr, m_ptr, o_ptr, H, S, K, off_q, off_k, off_v, qk_scale, out_scale,
                   smb, smh, smq, smk, IS_INT8: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_MASK: tl.constexpr, OUT_Q: tl.constexpr, BF16: tl.constexpr, D: tl.constexpr,
                   BLOCK_S: tl.constexpr, EVEN_S: tl.constexpr, BLOCK_K: tl.constexpr, MERGE_QK: tl.constexpr):
    half: tl.constexpr = tl.bfloat16 if BF16 else tl.float16
    pid = tl.program_id(0)  # sequence-major: the heads of one sequence run side by side and share x in L2
    b, h = pid // H, pid % H
    rows = tl.arange(0, BLOCK_S)
    x_ptrs = x_ptr + (b * S + rows)[:, None].to(tl.int64) * K + tl.arange(0, BLOCK_K)[None, :]
    head = h * D + tl.arange(0, D)
    acc_q, acc_k, acc_v = _products(x_ptrs, w_ptr, rows < S, off_q + head, off_k + head, off_v + head, K, IS_INT8,
                                    MERGE_QK, EVEN_S, BLOCK_S, BLOCK_K, D)
    q = _project(acc_q, scale_ptr, bias_ptr, off_q + head, HAS_SCALE, HAS_BIAS, half)
    k = _project(acc_k, scale_ptr, bias_ptr, off_k + head, HAS_SCALE, HAS_BIAS, half)
    v = _project(acc_v, scale_ptr, bias_ptr, off_v + head, HAS_SCALE, HAS_BIAS, half)
    _attend(q, k, v, m_ptr, o_ptr, b, h, H, S, qk_scale, out_scale, smb, smh, smq, smk, HAS_MASK, OUT_Q, half, D,
            BLOCK_S)


@triton.jit
def _attend(q, k, v, m_ptr, o_ptr, b, h, H, S, qk_scale, out_scale, smb, smh, smq, smk, HAS_MASK: tl.constexpr,
            OUT_Q: tl.constexpr, half: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr):
    """softmax(q k^T * scale + mask) v for one sequence and head, the whole key row in one block,
    written (or quantized) to its [S, D] place in the [B, S, H, D] output."""
    rows = tl.arange(0, BLOCK_S)
    row_ok = rows < S
    s = tl.dot(q, tl.trans(k)) * qk_scale  # log2 units: softmax by exp2
    if HAS_MASK:
        mask = tl.load(m_ptr + b * smb + h * smh + rows[:, None] * smq + rows[None, :] * smk,
                       mask=row_ok[:, None] & row_ok[None, :], other=0.0)
        # a "minus infinity" mask value (finfo.min) stays finite, as in the attention kernel
        s = tl.maximum(s + mask.to(tl.float32) * LOG2E, -1.0e30)
    s = tl.where(row_ok[None, :], s, float("-inf"))
    p = tl.math.exp2(s - tl.max(s, 1)[:, None])
    o = tl.dot(p.to(half), v) / tl.sum(p, 1)[:, None]
    o_ptrs = o_ptr + (b * S + rows)[:, None].to(tl.int64) * (H * D) + (h * D + tl.arange(0, D))[None, :]
    tl.store(o_ptrs, output(o, out_scale, OUT_Q, half), mask=row_ok[:, None])


def supported(x: torch.Tensor, w: torch.Tensor, heads: int, mask: torch.Tensor | None) -> bool:
    """Whether `qkv_attention` runs these operands: x [B, S, K] with S <= 128, K a multiple of 64,
    head size a power of two in 16..128, an additive mask broadcastable to [B, heads, S, S]."""
    if x.dim() != 3 or not x.is_cuda or w.dtype != x.dtype or w.dim() != 2 or w.shape[0] % 3:
        return False
    b, s, k = x.shape
    hidden = w.shape[0] // 3
    d = hidden // heads if hidden % heads == 0 else 0
    if s > MAX_SEQUENCE or k % 64 or w.shape[1] != k or d not in (16, 32, 64, 128):
        return False
    return mask is None or (mask.dim() <= 4 and broadcasts_to(mask.shape, (b, heads, s, s)))


def qkv_attention(x: torch.Tensor, w: torch.Tensor, col_scale: torch.Tensor | None, bias: torch.Tensor | None,
                  offsets: tuple[int, int, int], heads: int, mask: torch.Tensor | None, scale: float | None,
                  half: torch.dtype, out_q: tuple[float, torch.dtype] | None = None, config: dict | None = None,
                  async_int8: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with q, k, v the `offsets` (start rows) slices of
    x @ w^T * col_scale + bias, each rounded to `half` and split into `heads` heads. x [B, S, K]
    (int8, fp8, or `half`), w [3 * hidden, K] of x's type; returns [B, heads, S, head_dim] (a view
    of a [B, S, heads, head_dim] buffer) in `half`, or quantized with `out_q` (scale, dtype).
    `config` (tests): run these meta-parameters (BLOCK_K, MERGE_QK, num_warps, num_stages)
    instead of the autotuned ones. `async_int8`: int8 operands on Hopper may run the
    warp-specialized Gluon kernel (`qkv_attention_gluon`), timed once per shape class against
    this one (`lowbit.faster_int8_kernel`)."""
    b, s, k = x.shape
    hidden = w.shape[0] // 3
    d = hidden // heads
    scale = d ** -0.5 if scale is None else scale
    x = x.contiguous()
    w = w.contiguous()
    out = torch.empty((b, s, heads, d), dtype=out_q[1] if out_q else half, device=x.device)
    mask, strides = mask_operand(mask, x)
    block = max(16, triton.next_power_of_2(s))
    launch = _qkv_attention if config is None else _qkv_attention.fn
    forced = config or {}
    qk_scale = scale * 1.4426950408889634

    def run_triton():
        launch[(b * heads,)](
            x, w, col_scale if col_scale is not None else x, bias if bias is not None else x, mask, out,
            heads, s, k, *offsets, qk_scale, out_q[0] if out_q else 1.0, *strides,
            IS_INT8=x.dtype == torch.int8, HAS_SCALE=col_scale is not None, HAS_BIAS=bias is not None,
            HAS_MASK=mask is not x, OUT_Q=output_kind(out_q), BF16=half == torch.bfloat16, D=d,
            BLOCK_S=block, EVEN_S=s == block, **forced)

    if async_int8 and config is None and (out_q is None or out_q[1] == torch.int8):
        from trimtab.backends.gpu import qkv_attention_gluon as gluon_kernel

        if gluon_kernel.supported(x, w, heads, mask, strides, half, out_q is not None):
            from trimtab.backends.gpu.lowbit import bucket, faster_int8_kernel, multiprocessors

            def run_gluon():
                gluon_kernel.qkv_attention_pingpong(x, w, col_scale, bias, offsets, heads, mask, strides, qk_scale,
                                                    out, out_q, multiprocessors(x.device))

            kind = gluon_kernel.mask_kind(mask, x, strides, s)  # a row of keys or tiles: timed apart
            key = ("qkv_attention", bucket(b), s, k, d, heads, out_q is not None, kind)
            {"gluon": run_gluon, "triton": run_triton}[faster_int8_kernel(key, run_triton, run_gluon)]()
            return out.permute(0, 2, 1, 3)
    run_triton()
    return out.permute(0, 2, 1, 3)
