"""LayerNorm over the last axis in Triton, for CUDA: the residual add before it, and the int8/fp8
quantization of its output for the 8-bit layers that read it, in the same pass.

BERT-style encoders run `LayerNorm(x + residual)` twice per layer, and with 8-bit layers each
output is quantized for the next GEMM. Unfused that is three passes over the activations (the add,
the norm, the quantizer); here it is one read of x and the residual and one write of each output.
Statistics are fp32 (as PyTorch's kernel); the residual sum is rounded to the input's type first,
as the artifact's own Add does; the 8-bit copy quantizes the fp32 result (as the artifact's
QuantizeLinear on the fp32 LayerNorm output does), multiplying by 1 / scale.

With `stats_only` the normalized values are not written at all, only the 8-bit copy and each row's
(mean, 1 / std): the 8-bit GEMM that adds this norm's output as its residual recomputes it in its
epilogue from the norm's input (`lowbit_triton.add_residual`, the same fp32 arithmetic).
"""

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from trimtab.backends.gpu.lowbit_triton import round_to_int8


@triton.jit
def _layer_norm(x_ptr, z_ptr, w_ptr, b_ptr, y_ptr, q_ptr, rows, N, eps, q_scale, HAS_Z: tl.constexpr,
                HAS_B: tl.constexpr, QUANT: tl.constexpr, STATS: tl.constexpr, ROWS: tl.constexpr,
                BLOCK_N: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BLOCK_N)
    live = (r < rows)[:, None] & (c < N)[None, :]
    offs = r.to(tl.int64)[:, None] * N + c[None, :]
    x = tl.load(x_ptr + offs, mask=live, other=0.0)
    if HAS_Z:
        x = x + tl.load(z_ptr + offs, mask=live, other=0.0)  # in the input's type, as the Add it replaces
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    d = tl.where(live, x - mean[:, None], 0.0)
    rstd = libdevice.rsqrt(tl.sum(d * d, axis=1) / N + eps)
    y = d * rstd[:, None] * tl.load(w_ptr + c, mask=c < N, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y += tl.load(b_ptr + c, mask=c < N, other=0.0).to(tl.float32)[None, :]
    if STATS:  # y_ptr: [rows, 2] fp32
        tl.store(y_ptr + r.to(tl.int64) * 2, mean, mask=r < rows)
        tl.store(y_ptr + r.to(tl.int64) * 2 + 1, rstd, mask=r < rows)
    else:
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=live)
    if QUANT == 1:
        q = round_to_int8(y * (1.0 / q_scale))
        tl.store(q_ptr + offs, q, mask=live)
    if QUANT == 2:
        q = tl.minimum(tl.maximum(y * (1.0 / q_scale), -448.0), 448.0).to(tl.float8e4nv)
        tl.store(q_ptr + offs, q, mask=live)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
               residual: torch.Tensor | None = None, quant: tuple[float, torch.dtype] | None = None,
               stats_only: bool = False):
    """LayerNorm(x [+ residual]) over the last axis of a CUDA tensor; with `quant` = (scale, int8 or
    fp8 dtype) also the 8-bit copy: returns y or (y, y_q). With `stats_only` (no residual) y is
    replaced by the rows' (mean, 1 / std), fp32 [..., 2]."""
    if stats_only and residual is not None:
        raise ValueError("stats_only needs the norm's whole input in x (no residual to add)")
    x = x.contiguous()
    n = x.shape[-1]
    rows = x.numel() // n
    y = torch.empty((*x.shape[:-1], 2), dtype=torch.float32, device=x.device) if stats_only else torch.empty_like(x)
    q = torch.empty(x.shape, dtype=quant[1], device=x.device) if quant else y
    block_n = triton.next_power_of_2(n)
    # 4 rows of BERT's 768 a program; 8 where only stats and the 8-bit copy are written (16.6 against
    # 18.9 us at BERT-base batch 128: bench/results/residual_norm-2026-11-27-h100-options.json)
    per_program = max(1, (8192 if stats_only else 4096) // block_n)
    z = residual.contiguous() if residual is not None else x
    _layer_norm[(triton.cdiv(rows, per_program),)](
        x, z, weight.contiguous(), bias.contiguous() if bias is not None else weight, y, q, rows, n, eps,
        quant[0] if quant else 1.0, HAS_Z=residual is not None, HAS_B=bias is not None,
        QUANT=0 if not quant else (1 if quant[1] == torch.int8 else 2), STATS=stats_only, ROWS=per_program,
        BLOCK_N=block_n,
        num_warps=8 if per_program * block_n >= 4096 else 4)
    return (y, q) if quant else y
