"""Low-precision GEMM layers: int8 (and fp8 e4m3 on Hopper) matrix products with a fused epilogue.

    y = act(acc(x_q @ w_q^T) * col_scale[n] + bias[n])        then  fp16/fp32 out, or re-quantized

`x_q` is the activation quantized per tensor (int8 symmetric, or fp8 e4m3), `w_q` the weight
quantized per output channel ([N, K], K contiguous: the layout Hopper's 8-bit tensor-core
instructions want for B), `col_scale = x_scale * w_scale[n]`. The epilogue applies the scale, the
bias, ReLU or erf-GELU, and either casts to the output dtype or quantizes again with the next
layer's input scale, so the next GEMM reads 8-bit data straight away.

On CUDA the product is a Triton kernel (`tl.dot` on 8-bit operands: `wgmma` on Hopper, int32 or
fp32 accumulators); elsewhere a float64 reference gives the same values (int8 products are exact
in float64), which the CPU conformance tests use.

Rounding follows ONNX QuantizeLinear: x / scale rounded half to even, saturated (int8 [-128, 127];
fp8 e4m3fn +-448, round to nearest even by the conversion itself).
"""

from __future__ import annotations

import functools

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
ACTS = {None: 0, "relu": 1, "gelu": 2}


def quantize_reference(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """ONNX QuantizeLinear (zero point 0) in torch ops: the CPU path and the tests' yardstick."""
    y = x.float() / scale
    if dtype == torch.int8:
        return torch.clamp(torch.round(y), -128, 127).to(torch.int8)
    return torch.clamp(y, -FP8_MAX, FP8_MAX).to(FP8)


def qgemm_reference(x_q: torch.Tensor, w_q: torch.Tensor, col_scale: torch.Tensor, bias: torch.Tensor | None,
                    act: str | None, out_dtype: torch.dtype, out_scale: float | None = None) -> torch.Tensor:
    """The layer in float64 (exact int8 products): x_q [..., K], w_q [N, K] -> [..., N]."""
    acc = x_q.reshape(-1, x_q.shape[-1]).double() @ w_q.double().t()
    y = acc * col_scale.double()
    if bias is not None:
        y = y + bias.double()
    y = _act(y, act).float()
    y = y.reshape(*x_q.shape[:-1], w_q.shape[0])
    if out_scale is not None:
        return quantize_reference(y, out_scale, out_dtype)
    return y.to(out_dtype)


def _act(y: torch.Tensor, act: str | None) -> torch.Tensor:
    if act == "relu":
        return torch.relu(y)
    if act == "gelu":
        return torch.nn.functional.gelu(y)
    return y


# --- Triton (CUDA only; imported on first use) ---------------------------------------------------
@functools.cache
def _triton_kernels():
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    configs = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for bm, bn, bk, s, w in [
            (128, 256, 128, 3, 8), (128, 128, 128, 4, 8), (128, 128, 128, 3, 4), (256, 128, 128, 3, 8),
            (128, 256, 64, 4, 8), (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (128, 192, 128, 3, 8),
        ]
    ]

    @triton.autotune(configs=configs, key=["M", "N", "K", "IS_INT8", "ACT", "OUT_Q"])
    @triton.jit
    def qgemm_kernel(a_ptr, b_ptr, c_ptr, scale_ptr, bias_ptr, M, N, K, stride_am, stride_bn, stride_cm, inv_out,
                     IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, OUT_Q: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        # grouped tile order: neighbouring programs share A rows in L2
        pid = tl.program_id(0)
        num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        width = GROUP_M * num_n
        first_m = (pid // width) * GROUP_M
        size_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % width) % size_m
        pid_n = (pid % width) // size_m
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        # wrapped indices keep the loads unmasked along M and N (the store is masked)
        a_ptrs = a_ptr + (rows % M)[:, None] * stride_am + ks[None, :]
        b_ptrs = b_ptr + (cols % N)[None, :] * stride_bn + ks[:, None]  # [BLOCK_K, BLOCK_N], K-major
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if IS_INT8 else tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=ks[None, :] < k_left, other=0)
            b = tl.load(b_ptrs, mask=ks[:, None] < k_left, other=0)
            acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        y = acc.to(tl.float32) * tl.load(scale_ptr + cols, mask=cols < N, other=0.0)[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        if ACT == 1:
            y = tl.maximum(y, 0.0)
        if ACT == 2:
            y = 0.5 * y * (1.0 + libdevice.erf(y * 0.7071067811865476))
        if OUT_Q == 1:
            out = tl.minimum(tl.maximum(libdevice.rint(y * inv_out), -128.0), 127.0).to(tl.int8)
        elif OUT_Q == 2:
            out = tl.minimum(tl.maximum(y * inv_out, -448.0), 448.0).to(tl.float8e4nv)
        else:
            out = y.to(c_ptr.dtype.element_ty)
        c_ptrs = c_ptr + rows[:, None] * stride_cm + cols[None, :]
        tl.store(c_ptrs, out, mask=(rows[:, None] < M) & (cols[None, :] < N))

    @triton.jit
    def quantize_kernel(x_ptr, y_ptr, n, inv_scale, IS_INT8: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32) * inv_scale
        if IS_INT8:
            q = tl.minimum(tl.maximum(libdevice.rint(x), -128.0), 127.0).to(tl.int8)
        else:
            q = tl.minimum(tl.maximum(x, -448.0), 448.0).to(tl.float8e4nv)
        tl.store(y_ptr + offs, q, mask=offs < n)

    return triton, qgemm_kernel, quantize_kernel


def quantize(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """x (float, contiguous) -> int8 or fp8 with one scale; Triton on CUDA (one pass), else torch."""
    if x.device.type != "cuda":
        return quantize_reference(x, scale, dtype)
    triton, _, kernel = _triton_kernels()
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    n = x.numel()
    block = 4096
    kernel[(triton.cdiv(n, block),)](x, out, n, 1.0 / scale, IS_INT8=dtype == torch.int8, BLOCK=block, num_warps=8)
    return out


def qgemm(x_q: torch.Tensor, w_q: torch.Tensor, col_scale: torch.Tensor, bias: torch.Tensor | None,
          act: str | None, out_dtype: torch.dtype, out_scale: float | None = None) -> torch.Tensor:
    """act(x_q @ w_q^T * col_scale + bias), cast to `out_dtype` or quantized with `out_scale`
    (then `out_dtype` is int8 or fp8). x_q [..., K] and w_q [N, K] both int8 or both fp8."""
    if x_q.device.type != "cuda":
        return qgemm_reference(x_q, w_q, col_scale, bias, act, out_dtype, out_scale)
    triton, kernel, _ = _triton_kernels()
    lead, k = x_q.shape[:-1], x_q.shape[-1]
    a = x_q.reshape(-1, k)
    if a.stride(-1) != 1:
        a = a.contiguous()
    m, n = a.shape[0], w_q.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    out_q = 0 if out_scale is None else (1 if out_dtype == torch.int8 else 2)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    kernel[grid](a, w_q, out, col_scale, bias if bias is not None else col_scale, m, n, k,
                 a.stride(0), w_q.stride(0), out.stride(0), 0.0 if out_scale is None else 1.0 / out_scale,
                 IS_INT8=x_q.dtype == torch.int8, HAS_BIAS=bias is not None, ACT=ACTS[act], OUT_Q=out_q)
    return out.reshape(*lead, n)
