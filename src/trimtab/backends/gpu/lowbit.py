"""Low-precision GEMM layers: int8 (and fp8 e4m3 on Hopper) matrix products with a fused epilogue.

    y = act(acc(x_q @ w_q^T) * col_scale[n] + bias[n])        then  fp16/fp32 out, or re-quantized

`x_q` is the activation quantized per tensor (int8 symmetric, or fp8 e4m3), `w_q` the weight
quantized per output channel ([N, K], K contiguous: the layout Hopper's 8-bit tensor-core
instructions want for B), `col_scale = x_scale * w_scale[n]`. The epilogue applies the scale, the
bias, ReLU or erf-GELU, and either casts to the output dtype or quantizes again with the next
layer's input scale, so the next GEMM reads 8-bit data straight away.

With `residual` the epilogue also adds the layer's residual branch (the artifact's Add after the
layer, rounded as it rounds): a tensor, or a LayerNorm's output recomputed from the norm's input
and per-row statistics (`residual_value`; the GPU engine's deferred LayerNorm, fuse_int8.py).

On CUDA the product is a Triton kernel (`tl.dot` on 8-bit operands: `wgmma` on Hopper, int32 or
fp32 accumulators); elsewhere a float64 reference gives the same values (int8 products are exact
in float64), which the CPU conformance tests use.

Rounding follows ONNX QuantizeLinear: x / scale rounded half to even, saturated (int8 [-128, 127];
fp8 e4m3fn +-448, round to nearest even by the conversion itself). On CUDA the default (`fast`)
multiplies by 1 / scale and takes GELU in its tanh form on the hardware tanh (lowbit_triton.py
says why and how far that is from the exact form); `fast=False` keeps IEEE division and erf.
"""

from __future__ import annotations

import functools
import os

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
                    act: str | None, out_dtype: torch.dtype, out_scale: float | None = None,
                    residual: tuple | None = None) -> torch.Tensor:
    """The layer in float64 (exact int8 products): x_q [..., K], w_q [N, K] -> [..., N]."""
    acc = x_q.reshape(-1, x_q.shape[-1]).double() @ w_q.double().t()
    y = acc * col_scale.double()
    if bias is not None:
        y = y + bias.double()
    y = _act(y, act).float()
    y = y.reshape(*x_q.shape[:-1], w_q.shape[0])
    if out_scale is not None:
        return quantize_reference(y, out_scale, out_dtype)
    return add_residual(y.to(out_dtype), residual)


def add_residual(y: torch.Tensor, residual: tuple | None) -> torch.Tensor:
    """y + the residual branch, both in y's type (the artifact's Add)."""
    return y if residual is None else y + residual_value(residual, y.dtype)


def residual_value(residual: tuple, dtype: torch.dtype) -> torch.Tensor:
    """The residual branch in `dtype`: (z,) is z; (x, stats, gamma, beta) is the output of the
    LayerNorm over x's last axis whose per-row (mean, 1 / std) are `stats` [..., 2] (fp32), in
    fp32 as the norm kernel computes it, then rounded."""
    if len(residual) == 1:
        return residual[0].to(dtype)
    x, stats, gamma, beta = residual
    mean, rstd = stats[..., :1].float(), stats[..., 1:].float()
    return ((x.float() - mean) * rstd * gamma.float() + beta.float()).to(dtype)


def _act(y: torch.Tensor, act: str | None) -> torch.Tensor:
    if act == "relu":
        return torch.relu(y)
    if act == "gelu":
        return torch.nn.functional.gelu(y)
    return y


# --- Triton (CUDA only; imported on first use) ---------------------------------------------------
@functools.cache
def _triton_kernels() -> dict:
    import triton

    from trimtab.backends.gpu import lowbit_triton as k

    from triton.tools.tensor_descriptor import TensorDescriptor

    return {"triton": triton, "qgemm": k.qgemm_kernel, "qgemm_tma": k.qgemm_tma_kernel, "quantize": k.quantize_kernel,
            "descriptor": TensorDescriptor}


def quantize(x: torch.Tensor, scale: float, dtype: torch.dtype, fast: bool = True) -> torch.Tensor:
    """x (float, contiguous) -> int8 or fp8 with one scale; Triton on CUDA (one pass), else torch."""
    if x.device.type != "cuda":
        return quantize_reference(x, scale, dtype)
    return _quantize_pass(x, scale, dtype, dtype, fast)


def fake_quantize(x: torch.Tensor, scale: float, dtype: torch.dtype, fast: bool = True) -> torch.Tensor:
    """dequantize(quantize(x)) in x's float type: one pass on CUDA (the float tactic's input, and
    the fake-quant in front of convolutions of int8 + fp16 artifacts)."""
    if x.device.type != "cuda":
        return (quantize_reference(x, scale, dtype).float() * scale).to(x.dtype)
    return _quantize_pass(x, scale, dtype, x.dtype, fast)


def _quantize_pass(x: torch.Tensor, scale: float, dtype: torch.dtype, out_dtype: torch.dtype, fast: bool) -> torch.Tensor:
    """One elementwise pass over x's memory as it lies: a dense channels_last tensor stays
    channels_last (the output takes x's strides), so a convolution after it gets the layout it wants."""
    k = _triton_kernels()
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    out = torch.empty_like(x, dtype=out_dtype)  # same strides as x: the flat pass lines up
    n, block = x.numel(), 8192
    k["quantize"][(k["triton"].cdiv(n, block),)](x, out, n, scale, IS_INT8=dtype == torch.int8,
                                                 DEQUANT=out.dtype.is_floating_point and out.dtype.itemsize > 1,
                                                 FAST=fast, BLOCK=block, num_warps=8)
    return out


def qgemm(x_q: torch.Tensor, w_q: torch.Tensor, col_scale: torch.Tensor, bias: torch.Tensor | None,
          act: str | None, out_dtype: torch.dtype, out_scale: float | None = None, fast: bool = True,
          tma: bool | None = None, residual: tuple | None = None, async_int8: bool = True) -> torch.Tensor:
    """act(x_q @ w_q^T * col_scale + bias), cast to `out_dtype` or quantized with `out_scale`
    (then `out_dtype` is int8 or fp8). x_q [..., K] and w_q [N, K] both int8 or both fp8 (or
    both fp16/bf16: the fp16 engine's linear + GELU, fp32 sums; CUDA only). `tma`: the kernel
    whose tiles the TMA copy engine moves (None: wherever `tma_ok`; it was the faster kernel on
    every BERT layer measured). `residual`: (z,) or (x, stats, gamma, beta), added in the
    epilogue (`residual_value`; float outputs only), each of the output's shape (stats [..., 2]).
    `async_int8`: int8 with the fast epilogue on Hopper may run the warp-specialized Gluon kernel
    whose tensor-core products overlap each other and the epilogues (`lowbit_gluon`; `faster_int8_kernel`
    times it against the Triton one per shape)."""
    if residual is not None and out_scale is not None:
        raise ValueError("a residual add needs a float output, not a quantized one")
    if x_q.device.type != "cuda":
        return qgemm_reference(x_q, w_q, col_scale, bias, act, out_dtype, out_scale, residual)
    kernels = _triton_kernels()
    if tma is None:
        tma = tma_ok(x_q, w_q, out_dtype)
    lead, k = x_q.shape[:-1], x_q.shape[-1]
    a = x_q.reshape(-1, k)
    if a.stride(-1) != 1 or (tma and a.stride(0) != k):
        a = a.contiguous()
    m, n = a.shape[0], w_q.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    out_q = 0 if out_scale is None else (1 if out_dtype == torch.int8 else 2)
    flags = dict(IS_INT8=x_q.dtype == torch.int8, HAS_BIAS=bias is not None, ACT=ACTS[act], OUT_Q=out_q, FAST=fast,
                 RESIDUAL=0 if residual is None else (1 if len(residual) == 1 else 2))
    res_args = _residual_args(residual, col_scale)
    cdiv = kernels["triton"].cdiv
    grid = lambda meta: (cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    bias_arg, scale_out = bias if bias is not None else col_scale, 1.0 if out_scale is None else out_scale
    if tma:
        desc = kernels["descriptor"].from_tensor  # block shapes are set per config (pre_hook)
        sms = multiprocessors(a.device)
        tma_grid = lambda meta: (min(sms, grid(meta)[0]) if meta["PERSISTENT"] else grid(meta)[0],)  # noqa: E731
        w_c = w_q.contiguous()

        def run_triton():
            kernels["qgemm_tma"][tma_grid](desc(a, [1, 1]), desc(w_c, [1, 1]), desc(out, [1, 1]), col_scale, bias_arg,
                                           *res_args, m, n, k, scale_out, NUM_SMS=sms, M_BUCKET=bucket(m), **flags)

        if flags["IS_INT8"] and fast and async_int8 and torch.cuda.get_device_capability(a.device)[0] == 9:
            from trimtab.backends.gpu.lowbit_gluon import qgemm_pingpong

            gluon_flags = {key: flags[key] for key in ("HAS_BIAS", "ACT", "OUT_Q", "RESIDUAL")}
            run_gluon = lambda: qgemm_pingpong(a, w_c, out, col_scale, bias_arg, res_args, scale_out,  # noqa: E731
                                               gluon_flags, bucket(m), sms)
            key = (bucket(m), n, k, str(out_dtype), *gluon_flags.values())
            {"gluon": run_gluon, "triton": run_triton}[faster_int8_kernel(key, run_triton, run_gluon)]()
        else:
            run_triton()
    else:
        kernels["qgemm"][grid](a, w_q, out, col_scale, bias_arg, *res_args, m, n, k, a.stride(0), w_q.stride(0),
                               out.stride(0), scale_out, M_BUCKET=bucket(m), **flags)
    return out.reshape(*lead, n)


_INT8_KERNELS: dict[tuple, str] = {}


def faster_int8_kernel(key: tuple, run_triton, run_gluon) -> str:
    """"gluon" or "triton" for an int8 GEMM of this shape class and epilogue: the faster of the two,
    timed once (each autotuned on its first call; `fused._fastest`). With TRIMTAB_QUICK_TUNE=1 (the
    test suite) the Gluon kernel, untimed; while a CUDA graph is being captured nothing can be
    timed: the Triton kernel, not remembered."""
    if key in _INT8_KERNELS:
        return _INT8_KERNELS[key]
    if torch.cuda.is_current_stream_capturing():
        return "triton"
    if os.environ.get("TRIMTAB_QUICK_TUNE") == "1":
        _INT8_KERNELS[key] = "gluon"
        return "gluon"
    from trimtab.backends.gpu.fused import _fastest  # (fused imports this module)

    # timed as CUDA graphs, the GPU work alone: a plainly timed call also times the Python launch,
    # which for these kernels (four TMA descriptors built per call) is as long as the GEMM
    _INT8_KERNELS[key] = _fastest({"triton": run_triton, "gluon": run_gluon}, (), {})
    return _INT8_KERNELS[key]


def _residual_args(residual: tuple | None, placeholder: torch.Tensor) -> list[torch.Tensor]:
    """The kernels' (res, stats, gamma, beta) pointers, contiguous; `placeholder` where unused."""
    if residual is None:
        return [placeholder] * 4
    args = [t.contiguous() for t in residual]
    return args + [placeholder] * (4 - len(args))


def bucket(n: int) -> int:
    """n rounded up to a power of two: the autotuners' key for a dimension that varies per engine."""
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def tma_ok(x_q: torch.Tensor, w_q: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """TMA needs Hopper or later and 16-byte aligned rows (K elements in, N elements out)."""
    k, n = x_q.shape[-1], w_q.shape[0]
    return (x_q.is_cuda and torch.cuda.get_device_capability(x_q.device)[0] >= 9
            and (k * x_q.element_size()) % 16 == 0 and (n * out_dtype.itemsize) % 16 == 0)
