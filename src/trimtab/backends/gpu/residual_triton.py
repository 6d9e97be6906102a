"""The residual add of an 8-bit CNN in one pass, for CUDA: `trimtab.QuantAdd`.

In a ResNet block quantized the TensorRT way, the residual Add's inputs and the block's output go
through Q/DQ, and the convolution before the Add has no activation, so cuDNN cannot fuse its bias:

    conv (bias added by a second pass) -> FakeQuant -> Add(shortcut) -> Relu -> FakeQuant

five passes over the activations, which at ResNet-50 batch 256 cost more than the convolutions
themselves (bench/gpu_profile.py on an H100, 2026-11-26: 10 ms of a 25 ms int8 engine). Here they
are one: read both inputs, write the block's output.

    y = fq_out(relu(fq_a(a + bias_a) + fq_b(b + bias_b)))       every stage optional

Each stage rounds as the artifact's own op does: the bias add and the Add to the half-precision
type, the fake-quants as QuantizeLinear -> DequantizeLinear (x / scale by IEEE division, half to
even, saturate; the dequantized value rounded to the half type), so the result is the one the
unfused steps give, bit for bit. Biases are per channel; the pass runs over tensors that lie
channels-last (or 2-D [rows, channels]), where the channel of flat index i is i % C.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice

from trimtab.backends.gpu.lowbit_triton import round_int8_as_float


# Work per element is mostly type conversion, which H100s issue at 16 per clock per SM (an eighth
# of the FP32 rate): the adds run in the half type itself (correctly rounded, as the artifact's
# Add), the int8 rounding stays in fp32 (`round_int8_as_float`), and only the fake-quants convert.
@triton.jit
def _fake_quant(x, scale, ELEMENT: tl.constexpr):
    """QuantizeLinear -> DequantizeLinear of half `x` (ELEMENT 1: int8, 2: fp8 e4m3), in x's type."""
    y = libdevice.div_rn(x.to(tl.float32), scale)
    if ELEMENT == 1:
        q = round_int8_as_float(y)
    else:
        q = tl.minimum(tl.maximum(y, -448.0), 448.0).to(tl.float8e4nv).to(tl.float32)
    return (q * scale).to(x.dtype)


@triton.jit
def _input(ptr, bias_ptr, offs, live, C: tl.constexpr, scale, HAS_BIAS: tl.constexpr, ELEMENT: tl.constexpr):
    x = tl.load(ptr + offs, mask=live, other=0.0)
    if HAS_BIAS:
        x = x + tl.load(bias_ptr + offs % C, mask=live, other=0.0).to(x.dtype)
    if ELEMENT != 0:
        x = _fake_quant(x, scale, ELEMENT)
    return x


@triton.jit
def quant_add_kernel(a_ptr, b_ptr, bias_a_ptr, bias_b_ptr, y_ptr, n, C: tl.constexpr, scale_a, scale_b, scale_out,
                     HAS_BIAS_A: tl.constexpr, HAS_BIAS_B: tl.constexpr, ELEMENT_A: tl.constexpr,
                     ELEMENT_B: tl.constexpr, RELU: tl.constexpr, ELEMENT_OUT: tl.constexpr, BLOCK: tl.constexpr):
    """The flat index fits int32 (the caller checks): the channel is a cheap remainder by the
    compile-time C (one compiled kernel per channel count)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    a = _input(a_ptr, bias_a_ptr, offs, live, C, scale_a, HAS_BIAS_A, ELEMENT_A)
    b = _input(b_ptr, bias_b_ptr, offs, live, C, scale_b, HAS_BIAS_B, ELEMENT_B)
    y = a + b
    if RELU:
        y = tl.maximum(y, 0.0)
    if ELEMENT_OUT != 0:
        y = _fake_quant(y, scale_out, ELEMENT_OUT)
    tl.store(y_ptr + offs, y, mask=live)
