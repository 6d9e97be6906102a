"""Attention for short sequences in Triton, for CUDA: softmax(q k^T * scale + mask) v, with the
output optionally quantized to int8 / fp8 for the 8-bit layer that reads it.

At BERT's shapes (sequence 128, head size 64, 1,536 heads at batch 128) cuDNN's flash attention
behind `F.scaled_dot_product_attention` took 74 us a layer on an H100 (bench/gpu_profile.py):
about 100 MB of q/k/v/out traffic and 6.4 GFLOP, so far from either ceiling. Here one program
takes a block of queries of one head, keeps its scores in registers (online softmax in fp32 with
exp2), and reads q, k and v where the fused Q/K/V projection wrote them (any strides with a
contiguous last axis: no copies). The output is written in [batch, seq, heads, dim] order and
returned as a [batch, heads, seq, dim] view, so the transpose + reshape that follow in a BERT
graph cost nothing. With `out_q` it is quantized as it is written (1 / scale, round half even,
saturate), so the attention output projection reads 8-bit data without a quantize pass.

Only for fp16/bf16 inputs (an fp32 engine keeps SDPA, which runs fp32 without TF32) and head sizes
that are powers of two up to 128; the engine times it against SDPA and keeps the faster.
"""

import torch
import triton
import triton.language as tl

from trimtab.backends.gpu.lowbit_triton import few_configs, round_to_int8

LOG2E = tl.constexpr(1.4426950408889634)


@triton.autotune(configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                          for bm, bn, w, s in [(64, 64, 4, 2), (128, 64, 8, 2), (128, 128, 8, 2), (64, 128, 4, 2),
                                               (128, 32, 4, 3)]],
                 key=["S", "D", "HAS_MASK", "MASK_PER_KEY", "OUT_Q"], prune_configs_by={"early_config_prune": few_configs})
@triton.jit
def _attention(q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, H, S, qk_scale, out_scale,
               sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, smb, smh, smq, smk, sob, soh, sos,
               HAS_MASK: tl.constexpr, MASK_PER_KEY: tl.constexpr, OUT_Q: tl.constexpr, D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sqs + d[None, :], mask=rows[:, None] < S, other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    for start in range(0, S, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = tl.load(k_ptr + b * skb + h * skh + cols[None, :] * sks + d[:, None], mask=cols[None, :] < S, other=0.0)
        s = tl.dot(q, k) * qk_scale  # log2 units: softmax by exp2
        if HAS_MASK:
            if MASK_PER_KEY:  # one row of key biases for every query (a padding mask): load it once
                mask = tl.load(m_ptr + b * smb + h * smh + cols * smk, mask=cols < S, other=0.0)[None, :]
            else:
                mask = tl.load(m_ptr + b * smb + h * smh + rows[:, None] * smq + cols[None, :] * smk,
                               mask=(rows[:, None] < S) & (cols[None, :] < S), other=0.0)
            # a "minus infinity" mask value (finfo.min) stays finite, as in SDPA: a row masked
            # everywhere averages v instead of turning into NaN
            s = tl.maximum(s + mask.to(tl.float32) * LOG2E, -1.0e30)
        s = tl.where(cols[None, :] < S, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + b * svb + h * svh + cols[:, None] * svs + d[None, :], mask=cols[:, None] < S, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    o_ptrs = o_ptr + b * sob + h * soh + rows[:, None] * sos + d[None, :]
    tl.store(o_ptrs, output(acc / l_i[:, None], out_scale, OUT_Q, o_ptr.dtype.element_ty), mask=rows[:, None] < S)


@triton.jit
def output(o, out_scale, OUT_Q: tl.constexpr, out_ty: tl.constexpr):
    """The attention's fp32 output as it is written: quantized to int8 (OUT_Q 1: 1 / scale, round
    half to even, saturate) or fp8 e4m3 (OUT_Q 2: saturate, round), or cast to `out_ty` (0)."""
    if OUT_Q == 1:
        o = round_to_int8(o * (1.0 / out_scale))
    elif OUT_Q == 2:
        o = tl.minimum(tl.maximum(o * (1.0 / out_scale), -448.0), 448.0).to(tl.float8e4nv)
    else:
        o = o.to(out_ty)
    return o


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    d = q.shape[-1]
    return (q.is_cuda and q.dim() == 4 and q.dtype in (torch.float16, torch.bfloat16) and k.dtype == v.dtype == q.dtype
            and q.shape == k.shape == v.shape and d in (16, 32, 64, 128)
            and all(t.stride(-1) == 1 for t in (q, k, v))
            and (mask is None or (mask.dim() <= 4 and broadcasts_to(mask.shape, q.shape[:2] + (q.shape[2], k.shape[2])))))


def broadcasts_to(shape, target) -> bool:
    shape = (1,) * (4 - len(shape)) + tuple(shape)
    return all(s in (1, t) for s, t in zip(shape, target))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None,
              out_q: tuple[float, torch.dtype] | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for q, k, v [B, H, S, D] (`supported` says which); returns
    [B, H, S, D] (a view of a [B, S, H, D] buffer), in q's type or quantized with `out_q`."""
    b, h, s, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    out = torch.empty((b, s, h, d), dtype=out_q[1] if out_q else q.dtype, device=q.device)
    mask, strides = mask_operand(mask, q)
    grid = lambda meta: (triton.cdiv(s, meta["BLOCK_M"]), b * h)  # noqa: E731
    _attention[grid](q, k, v, mask, out, h, s, scale * 1.4426950408889634, out_q[0] if out_q else 1.0,
                     q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                     v.stride(0), v.stride(1), v.stride(2), *strides, out.stride(0), out.stride(2), out.stride(1),
                     HAS_MASK=mask is not q, MASK_PER_KEY=strides[2] == 0, OUT_Q=output_kind(out_q), D=d)
    return out.permute(0, 2, 1, 3)


def mask_operand(mask: torch.Tensor | None, stand_in: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """An additive mask as a 4-D [batch, heads, queries, keys] view and its strides, 0 along the
    axes it broadcasts over; without a mask, `stand_in` (any tensor: the kernel reads no mask then)
    and zero strides."""
    if mask is None:
        return stand_in, [0, 0, 0, 0]
    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    return mask, [0 if n == 1 else st for n, st in zip(mask.shape, mask.stride())]


def output_kind(out_q: tuple[float, torch.dtype] | None) -> int:
    """`output`'s OUT_Q for an (out_scale, dtype) quantized output, or None."""
    return 0 if not out_q else (1 if out_q[1] == torch.int8 else 2)
