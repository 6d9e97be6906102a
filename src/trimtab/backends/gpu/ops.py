"""ONNX operators as PyTorch kernels.

Each entry of `KERNELS` is a *maker*: `make(node: NodeSpec) -> kernel`, called once at build time.
The maker reads attributes and constant inputs (shapes, axes, pads, scales ...) and returns a
`kernel(*inputs) -> Tensor | tuple[Tensor, ...]` that does only tensor work at run time. Inputs
that the ONNX node leaves out are passed as None. A maker that meets a form it cannot run raises
`UnsupportedOpError` (at build time, naming the op and the node).

The same kernels fold constants at build time (`lower.py`), so every shape computation of a
static-shape profile is evaluated once and disappears from the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trimtab.backends.gpu.errors import UnsupportedOpError

Kernel = Callable[..., Any]

# ONNX TensorProto element types -> torch dtypes
ONNX_DTYPES = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16, 17: torch.float8_e4m3fn,
}


@dataclass
class NodeSpec:
    """What a maker may look at: the op, its attributes, which inputs are constants (their values),
    the shapes of all inputs (static per profile) and the opset."""

    op: str
    name: str
    attrs: dict[str, Any]
    consts: list[torch.Tensor | None]  # the value of each constant input, None for dynamic/missing
    shapes: list[tuple[int, ...] | None]  # every input's shape (None for a missing input)
    opset: int = 17
    present: list[bool] = field(default_factory=list)  # which inputs the node names
    device: str = "cpu"  # the engine's device type: makers may pick a device-specific kernel
    # kernel choices timed by earlier engines of the same model, shared by the backend (`choice_key`)
    choices: dict | None = None

    def choice_key(self, kind: str) -> tuple:
        """Where a timed kernel choice of this step is kept for the backend's later engines: the
        step and its input shapes, each length rounded up to a power of two. Engines for 42 and 54
        tokens (one evaluation batch after another) share their choices instead of timing again."""
        shapes = tuple(tuple(1 << max(int(n) - 1, 0).bit_length() for n in shape) if shape else None
                       for shape in self.shapes)
        return kind, self.op, self.name, shapes

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def const(self, index: int, what: str = "input") -> torch.Tensor | None:
        """The constant value of input `index` (None when the node leaves it out); an input that
        is computed at run time is an error: the engine needs it fixed per profile."""
        if index >= len(self.present) or not self.present[index]:
            return None
        value = self.consts[index]
        if value is None:
            raise UnsupportedOpError(self.op, self.name, f"its {what} (input {index}) must be a constant "
                                     "(static per batch profile) but is computed at run time")
        return value

    def ints(self, index: int, what: str = "input") -> list[int] | None:
        value = self.const(index, what)
        return None if value is None else [int(v) for v in value.reshape(-1).tolist()]

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.op, self.name, why)


KERNELS: dict[str, Callable[[NodeSpec], Kernel]] = {}


def kernel(*ops: str):
    def register(make):
        for op in ops:
            KERNELS[op] = make
        return make

    return register


def _rank(node: NodeSpec, index: int = 0) -> int:
    return len(node.shapes[index])


# elementwise -----------------------------------------------------------------------------------
_UNARY = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sqrt": torch.sqrt,
    "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "Not": torch.logical_not, "Floor": torch.floor, "Ceil": torch.ceil, "Sign": torch.sign,
    "Identity": lambda x: x, "Softplus": F.softplus, "Sin": torch.sin, "Cos": torch.cos,
    "IsNaN": torch.isnan, "Round": torch.round,
}
for _op, _fn in _UNARY.items():
    KERNELS[_op] = (lambda fn: lambda node: fn)(_fn)


def _div(a, b):
    if a.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates, as C does


_BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": torch.pow,
    "Equal": torch.eq, "Greater": torch.gt, "GreaterOrEqual": torch.ge, "Less": torch.lt,
    "LessOrEqual": torch.le, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}
for _op, _fn in _BINARY.items():
    KERNELS[_op] = (lambda fn: lambda node: fn)(_fn)


@kernel("Pow")
def _pow(node):
    exponent = node.consts[1]
    if exponent is not None and exponent.numel() == 1:
        value = float(exponent.reshape(-1)[0])
        if value == 2.0:
            return lambda x, _e: x * x
        if value == 0.5:
            return lambda x, _e: torch.sqrt(x)
        return lambda x, _e: torch.pow(x, value)
    return lambda x, e: torch.pow(x, e.to(x.dtype) if x.is_floating_point() else e)


@kernel("Max", "Min", "Sum", "Mean")
def _variadic(node):
    fn = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}[node.op]

    def run(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out / len(xs) if node.op == "Mean" else out

    return run


@kernel("IsInf")
def _is_inf(node):
    positive, negative = bool(node.attr("detect_positive", 1)), bool(node.attr("detect_negative", 1))
    if positive and negative:
        return torch.isinf
    if positive:
        return torch.isposinf
    if negative:
        return torch.isneginf
    return lambda x: torch.zeros_like(x, dtype=torch.bool)


@kernel("Where")
def _where(node):
    return torch.where


@kernel("Dropout")
def _dropout(node):
    return lambda x, *_: x  # inference: identity (the mask output is not supported)


@kernel("Clip")
def _clip(node):
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo_t, hi_t = node.const(1, "min"), node.const(2, "max")
        lo = None if lo_t is None else float(lo_t.reshape(-1)[0])
        hi = None if hi_t is None else float(hi_t.reshape(-1)[0])
    return lambda x, *_: torch.clamp(x, lo, hi)


@kernel("LeakyRelu")
def _leaky(node):
    slope = float(node.attr("alpha", 0.01))
    return lambda x: F.leaky_relu(x, slope)


@kernel("Elu")
def _elu(node):
    alpha = float(node.attr("alpha", 1.0))
    return lambda x: F.elu(x, alpha)


@kernel("HardSigmoid")
def _hard_sigmoid(node):
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0)


@kernel("HardSwish")
def _hard_swish(node):
    return F.hardswish


@kernel("Gelu")
def _gelu(node):
    approximate = node.attr("approximate", "none")
    return lambda x: F.gelu(x, approximate=approximate)


@kernel("Cast")
def _cast(node):
    to = node.attr("to")
    if to not in ONNX_DTYPES:
        raise node.unsupported(f"cast to ONNX element type {to} is not supported")
    dtype = ONNX_DTYPES[to]
    return lambda x: x.to(dtype)


@kernel("CastLike")
def _cast_like(node):
    return lambda x, like: x.to(like.dtype)


# normalisation and softmax ----------------------------------------------------------------------
@kernel("Softmax", "LogSoftmax")
def _softmax(node):
    fn = torch.softmax if node.op == "Softmax" else torch.log_softmax
    rank = _rank(node)
    if node.opset >= 13:
        axis = int(node.attr("axis", -1))
        return lambda x: fn(x, axis)
    axis = int(node.attr("axis", 1)) % rank  # opset < 13: coerce to 2-D at `axis`
    if axis == rank - 1:
        return lambda x: fn(x, -1)
    return lambda x: fn(x.reshape(*x.shape[:axis], -1), -1).reshape(x.shape)


@kernel("BatchNormalization")
def _batch_norm(node):
    eps = float(node.attr("epsilon", 1e-5))
    return lambda x, scale, bias, mean, var: F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


@kernel("LayerNormalization")
def _layer_norm(node):
    axis = int(node.attr("axis", -1)) % _rank(node)
    eps = float(node.attr("epsilon", 1e-5))
    normalized = tuple(node.shapes[0][axis:])

    def run(x, scale, bias=None):
        scale = scale.expand(normalized) if tuple(scale.shape) != normalized else scale
        if bias is not None and tuple(bias.shape) != normalized:
            bias = bias.expand(normalized)
        if x.dtype != scale.dtype:  # stash_type: compute in the stored (fp32) precision
            return F.layer_norm(x.float(), normalized, scale.float(),
                                None if bias is None else bias.float(), eps).to(x.dtype)
        return F.layer_norm(x, normalized, scale, bias, eps)

    return run


@kernel("InstanceNormalization")
def _instance_norm(node):
    eps = float(node.attr("epsilon", 1e-5))
    return lambda x, scale, bias: F.instance_norm(x, weight=scale, bias=bias, eps=eps)


# reductions ------------------------------------------------------------------------------------
@kernel("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
        "ReduceSumSquare")
def _reduce(node):
    keep = bool(node.attr("keepdims", 1))
    axes = node.attr("axes")
    if axes is None and len(node.present) > 1 and node.present[1]:
        axes = node.ints(1, "axes")
    rank = _rank(node)
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return lambda x, *_: x
        axes = list(range(rank))
    dims = tuple(sorted(a % rank for a in axes))
    op = node.op

    def run(x, *_):
        if op == "ReduceMean":
            return x.mean(dim=dims, keepdim=keep)
        if op == "ReduceSum":
            return x.sum(dim=dims, keepdim=keep)
        if op == "ReduceSumSquare":
            return (x * x).sum(dim=dims, keepdim=keep)
        if op == "ReduceL2":
            return torch.linalg.vector_norm(x, 2, dim=dims, keepdim=keep)
        if op == "ReduceL1":
            return x.abs().sum(dim=dims, keepdim=keep)
        if op == "ReduceProd":
            out = x
            for d in sorted(dims, reverse=True):
                out = out.prod(dim=d, keepdim=keep)
            return out
        out = x.amax(dim=dims, keepdim=keep) if op == "ReduceMax" else x.amin(dim=dims, keepdim=keep)
        return out

    return run


@kernel("ArgMax", "ArgMin")
def _arg(node):
    axis, keep = int(node.attr("axis", 0)), bool(node.attr("keepdims", 1))
    if node.attr("select_last_index", 0):
        raise node.unsupported("select_last_index=1 is not supported")
    fn = torch.argmax if node.op == "ArgMax" else torch.argmin
    return lambda x: fn(x, dim=axis, keepdim=keep)


# matrix products and convolutions ----------------------------------------------------------------
@kernel("MatMul")
def _matmul(node):
    return torch.matmul


@kernel("Gemm")
def _gemm(node):
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    ta, tb = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))

    def run(a, b, c=None):
        a = a.t() if ta else a
        b = b.t() if tb else b
        out = a @ b
        if alpha != 1.0:
            out = out * alpha
        if c is not None:
            out = out + (c * beta if beta != 1.0 else c)
        return out

    return run


def conv_geometry(node: NodeSpec, transpose: bool = False) -> dict:
    """Strides, dilations, groups and padding of a Conv/ConvTranspose node with the given input
    and weight shapes: `padding` is symmetric per axis for torch, `pre_pad` the extra F.pad
    (torch order: last axis first) that asymmetric or SAME padding needs."""
    x_shape, w_shape = node.shapes[0], node.shapes[1]
    spatial = len(x_shape) - 2
    if spatial not in (1, 2, 3):
        raise node.unsupported(f"{spatial}-D convolution is not supported")
    kernel_shape = list(w_shape[2:])
    strides = list(node.attr("strides", [1] * spatial))
    dilations = list(node.attr("dilations", [1] * spatial))
    pads = list(node.attr("pads", [0] * 2 * spatial))
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if transpose:
            raise node.unsupported("auto_pad SAME on ConvTranspose is not supported")
        pads = []
        begins, ends = [], []
        for size, k, s, d in zip(x_shape[2:], kernel_shape, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else big)
            ends.append(big if auto_pad == "SAME_UPPER" else small)
        pads = begins + ends
    elif auto_pad == "VALID":
        pads = [0] * 2 * spatial
    begins, ends = pads[:spatial], pads[spatial:]
    padding = [min(b, e) for b, e in zip(begins, ends)]
    pre_pad = []
    for b, e, p in reversed(list(zip(begins, ends, padding))):
        pre_pad += [b - p, e - p]
    if transpose and any(pre_pad):
        raise node.unsupported("asymmetric pads on ConvTranspose are not supported")
    return {"strides": strides, "dilations": dilations, "padding": padding,
            "pre_pad": pre_pad if any(pre_pad) else None, "groups": int(node.attr("group", 1)),
            "spatial": spatial, "kernel_shape": kernel_shape}


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@kernel("Conv")
def _conv(node):
    g = conv_geometry(node)
    conv = _CONV[g["spatial"]]
    pre_pad = g["pre_pad"]

    def run(x, w, b=None):
        if pre_pad:
            x = F.pad(x, pre_pad)
        return conv(x, w, b, g["strides"], g["padding"], g["dilations"], g["groups"])

    return run


@kernel("ConvTranspose")
def _conv_transpose(node):
    g = conv_geometry(node, transpose=True)
    if node.attr("output_shape") is not None:
        raise node.unsupported("the output_shape attribute is not supported (give pads instead)")
    output_padding = list(node.attr("output_padding", [0] * g["spatial"]))
    conv = _CONV_T[g["spatial"]]

    def run(x, w, b=None):
        return conv(x, w, b, g["strides"], g["padding"], output_padding, g["groups"], g["dilations"])

    return run


# pooling and resizing ---------------------------------------------------------------------------
@kernel("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node):
    dims = tuple(range(2, _rank(node)))
    if node.op == "GlobalAveragePool":
        return lambda x: x.mean(dim=dims, keepdim=True)
    return lambda x: x.amax(dim=dims, keepdim=True)


@kernel("MaxPool", "AveragePool")
def _pool(node):
    spatial = _rank(node) - 2
    if spatial not in (1, 2, 3):
        raise node.unsupported(f"{spatial}-D pooling is not supported")
    if node.attrs.get("_outputs", 1) > 1:
        raise node.unsupported("the Indices output of MaxPool is not supported")
    kernel_shape = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides", [1] * spatial))
    dilations = list(node.attr("dilations", [1] * spatial))
    ceil = bool(node.attr("ceil_mode", 0))
    fake = NodeSpec(node.op, node.name, {**node.attrs, "group": 1}, node.consts,
                    [node.shapes[0], (1, 1, *kernel_shape)], node.opset)
    g = conv_geometry(fake)
    padding, pre_pad = g["padding"], g["pre_pad"]
    if any(p * 2 > k for p, k in zip(padding, kernel_shape)):
        raise node.unsupported("pads larger than half the kernel are not supported")
    if node.op == "MaxPool":
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]

        def run_max(x):
            if pre_pad:
                x = F.pad(x, pre_pad, value=float("-inf"))
            return pool(x, kernel_shape, strides, padding, dilations, ceil_mode=ceil)

        if node.device == "cuda" and spatial == 2 and not pre_pad and not ceil and dilations == [1, 1]:
            return _nhwc_max_pool(run_max, kernel_shape, strides, padding)
        return run_max
    if any(d != 1 for d in dilations):
        raise node.unsupported("dilated AveragePool is not supported")
    include = bool(node.attr("count_include_pad", 0))
    if pre_pad and not include:
        raise node.unsupported("asymmetric pads with count_include_pad=0 are not supported")
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]

    def run_avg(x):
        if pre_pad:
            x = F.pad(x, pre_pad)
        return pool(x, kernel_shape, strides, padding, ceil_mode=ceil, count_include_pad=include)

    return run_avg


def _nhwc_max_pool(fallback, kernel_shape, strides, padding):
    """Triton's max pool for channels_last tensors (PyTorch's NHWC kernel is slow), else `fallback`."""
    from trimtab.backends.gpu.pool_triton import max_pool2d_nhwc

    def run(x):
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
            return max_pool2d_nhwc(x, kernel_shape, strides, padding)
        return fallback(x)

    return run


@kernel("Resize", "Upsample")
def _resize(node):
    rank = _rank(node)
    spatial_rank = rank - 2
    mode = node.attr("mode", "nearest")
    ctm = node.attr("coordinate_transformation_mode", "half_pixel" if node.op == "Resize" else "asymmetric")
    nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
    if node.op == "Upsample" or node.opset < 11:
        scales_t, sizes = node.const(1, "scales"), None
    else:
        scales_t = node.const(2, "scales") if len(node.present) > 2 and node.present[2] else None
        if scales_t is not None and scales_t.numel() == 0:
            scales_t = None
        sizes = node.ints(3, "sizes") if len(node.present) > 3 and node.present[3] else None
    if node.attr("axes") is not None:
        raise node.unsupported("the axes attribute is not supported")
    in_shape = node.shapes[0]
    if sizes is not None:
        out_shape = list(sizes)
    elif scales_t is not None:
        scales = [float(s) for s in scales_t.tolist()]
        out_shape = [int(np.floor(d * s)) for d, s in zip(in_shape, scales)]
    else:
        raise node.unsupported("needs scales or sizes")
    if list(out_shape[:2]) != list(in_shape[:2]):
        raise node.unsupported("resizing the batch or channel axis is not supported")
    size = out_shape[2:]
    if mode == "nearest":
        if ctm == "asymmetric" and nearest_mode == "floor":
            return lambda x, *_: F.interpolate(x, size=size, mode="nearest")
        if ctm in ("half_pixel", "pytorch_half_pixel") and nearest_mode in ("round_prefer_ceil",):
            return lambda x, *_: F.interpolate(x, size=size, mode="nearest-exact")
        if all(o % i == 0 for o, i in zip(size, in_shape[2:])) and ctm in ("asymmetric", "half_pixel"):
            return lambda x, *_: F.interpolate(x, size=size, mode="nearest")  # integer upscale: same indices
        raise node.unsupported(f"nearest resize with coordinate_transformation_mode={ctm}, "
                               f"nearest_mode={nearest_mode} is not supported")
    if mode == "linear":
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(spatial_rank)
        if torch_mode is None:
            raise node.unsupported(f"{spatial_rank}-D linear resize is not supported")
        if ctm == "align_corners":
            return lambda x, *_: F.interpolate(x, size=size, mode=torch_mode, align_corners=True)
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            if ctm == "pytorch_half_pixel" and any(s == 1 for s in size):
                raise node.unsupported("pytorch_half_pixel with an output size of 1 is not supported")
            return lambda x, *_: F.interpolate(x, size=size, mode=torch_mode, align_corners=False)
        raise node.unsupported(f"linear resize with coordinate_transformation_mode={ctm} is not supported")
    raise node.unsupported(f"mode={mode} is not supported")


@kernel("Pad")
def _pad(node):
    mode = node.attr("mode", "constant")
    rank = _rank(node)
    if node.opset < 11:
        pads, value = list(node.attr("pads")), float(node.attr("value", 0.0))
    else:
        pads = node.ints(1, "pads")
        value_t = node.const(2, "constant_value") if len(node.present) > 2 else None
        value = 0.0 if value_t is None or value_t.numel() == 0 else value_t.reshape(-1)[0].item()
    axes = node.ints(3, "axes") if len(node.present) > 3 else None
    axes = [a % rank for a in axes] if axes else list(range(rank))
    n = len(axes)
    begins, ends = dict(zip(axes, pads[:n])), dict(zip(axes, pads[n:]))
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):
        torch_pads += [begins.get(axis, 0), ends.get(axis, 0)]
    while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        return lambda x, *_: F.pad(x, torch_pads, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise node.unsupported(f"mode={mode} is not supported")
    if any(p < 0 for p in torch_pads) or len(torch_pads) // 2 > min(3, rank - 1):
        raise node.unsupported(f"mode={mode} padding of the batch/channel axes is not supported")
    return lambda x, *_: F.pad(x, torch_pads, mode=torch_mode)


# shape and indexing ------------------------------------------------------------------------------
@kernel("Reshape")
def _reshape(node):
    target = node.ints(1, "shape")
    allowzero = bool(node.attr("allowzero", 0))
    shape = [d if (d != 0 or allowzero) else node.shapes[0][i] for i, d in enumerate(target)]
    return lambda x, _s: x.reshape(shape)


@kernel("Flatten")
def _flatten(node):
    axis = int(node.attr("axis", 1)) % (_rank(node) + 1)
    shape = node.shapes[0]
    rows = int(np.prod(shape[:axis], dtype=np.int64))
    return lambda x: x.reshape(rows, -1)


@kernel("Transpose")
def _transpose(node):
    perm = node.attr("perm") or list(reversed(range(_rank(node))))
    return lambda x: x.permute(perm)


@kernel("Squeeze")
def _squeeze(node):
    axes = node.attr("axes") if node.opset < 13 else node.ints(1, "axes")
    shape = node.shapes[0]
    if axes is None:
        out = [d for d in shape if d != 1]
    else:
        drop = {a % len(shape) for a in axes}
        out = [d for i, d in enumerate(shape) if i not in drop]
    return lambda x, *_: x.reshape(out)


@kernel("Unsqueeze")
def _unsqueeze(node):
    axes = node.attr("axes") if node.opset < 13 else node.ints(1, "axes")
    out = list(node.shapes[0])
    rank = len(out) + len(axes)
    for axis in sorted(a % rank for a in axes):
        out.insert(axis, 1)
    return lambda x, *_: x.reshape(out)


@kernel("Concat")
def _concat(node):
    axis = int(node.attr("axis"))
    return lambda *xs: torch.cat([x for x in xs if x is not None], dim=axis)


@kernel("Split")
def _split(node):
    axis = int(node.attr("axis", 0))
    size = node.shapes[0][axis]
    if node.opset >= 13:
        split = node.ints(1, "split") if len(node.present) > 1 else None
    else:
        split = node.attr("split")
    if not split:
        parts = int(node.attr("num_outputs", 0)) or int(node.attrs["_outputs"])
        chunk = -(-size // parts)
        split = [chunk] * (parts - 1) + [size - chunk * (parts - 1)]
    return lambda x, *_: tuple(torch.split(x, split, dim=axis))


@kernel("Slice")
def _slice(node):
    shape = node.shapes[0]
    if node.opset < 10:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = node.ints(1, "starts"), node.ints(2, "ends")
        axes = node.ints(3, "axes") if len(node.present) > 3 else None
        steps = node.ints(4, "steps") if len(node.present) > 4 else None
    axes = list(axes) if axes else list(range(len(starts)))
    steps = list(steps) if steps else [1] * len(starts)
    index: list[Any] = [slice(None)] * len(shape)
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= len(shape)
        if step == 0:
            raise node.unsupported("a step of 0 is invalid")
        lo, hi, st = slice(start, end, step).indices(shape[axis])
        if step > 0:
            index[axis] = slice(lo, max(lo, hi), st)
        else:  # torch has no negative steps: gather the indices
            flips.append((axis, torch.arange(lo, hi, st, dtype=torch.int64, device=node.device)))
    index_t = tuple(index)

    def run(x, *_):
        out = x[index_t]
        for axis, idx in flips:
            out = out.index_select(axis, idx)
        return out

    return run


@kernel("Gather")
def _gather(node):
    axis = int(node.attr("axis", 0)) % _rank(node)
    data_shape = node.shapes[0]
    idx_shape = node.shapes[1]
    out_shape = list(data_shape[:axis]) + list(idx_shape) + list(data_shape[axis + 1:])
    size = data_shape[axis]

    def run(x, idx):
        idx = idx.reshape(-1).to(torch.int64)
        idx = torch.where(idx < 0, idx + size, idx)
        return x.index_select(axis, idx).reshape(out_shape)

    return run


@kernel("GatherElements")
def _gather_elements(node):
    axis = int(node.attr("axis", 0))
    size = node.shapes[0][axis]
    return lambda x, idx: torch.gather(x, axis, torch.where(idx < 0, idx + size, idx).to(torch.int64))


@kernel("Expand")
def _expand(node):
    target = node.ints(1, "shape")
    out = list(np.broadcast_shapes(tuple(node.shapes[0]), tuple(target)))
    return lambda x, _s: x.expand(out)


@kernel("Tile")
def _tile(node):
    repeats = node.ints(1, "repeats")
    return lambda x, _r: x.repeat(repeats)


@kernel("Shape")
def _shape(node):
    shape = list(node.shapes[0])
    start = node.attr("start", 0)
    end = node.attr("end", None)
    value = torch.tensor(shape[start:end], dtype=torch.int64, device=node.device)
    return lambda x: value


@kernel("Size")
def _size(node):
    value = torch.tensor(int(np.prod(node.shapes[0], dtype=np.int64)), dtype=torch.int64, device=node.device)
    return lambda x: value


@kernel("ConstantOfShape")
def _constant_of_shape(node):
    shape = node.ints(0, "shape")
    value = node.attr("value")
    fill = torch.zeros(1) if value is None else torch.as_tensor(value).reshape(-1)[:1]
    fill = fill.to(node.device)
    return lambda _s: fill.expand(shape).clone() if shape else fill.reshape(()).clone()


@kernel("Range")
def _range(node):
    return lambda start, limit, delta: torch.arange(start.item(), limit.item(), delta.item(),
                                                   dtype=start.dtype, device=start.device)


@kernel("Trilu")
def _trilu(node):
    upper = bool(node.attr("upper", 1))
    k = node.ints(1, "k")
    offset = k[0] if k else 0
    return lambda x, *_: torch.triu(x, offset) if upper else torch.tril(x, offset)


# quantization ----------------------------------------------------------------------------------
_QRANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int32: (-(2**31), 2**31 - 1)}


def axis_shape(rank: int, axis: int, length: int) -> list[int]:
    shape = [1] * rank
    shape[axis % rank] = length
    return shape


def _qparams(node: NodeSpec):
    """(axis-broadcast shape or None, integer dtype) of a Quantize/DequantizeLinear node."""
    scale_shape = node.shapes[1]
    rank = _rank(node)
    if node.attr("block_size"):
        raise node.unsupported("blocked quantization is not supported")
    if scale_shape and int(np.prod(scale_shape)) > 1:
        return axis_shape(rank, int(node.attr("axis", 1)), scale_shape[0])
    return None


@kernel("QuantizeLinear")
def _quantize(node):
    shape = _qparams(node)
    zero = node.const(2, "zero point")
    dtype = torch.uint8 if zero is None else zero.dtype
    if dtype == torch.float8_e4m3fn:
        return _quantize_fp8(node, shape, zero)
    if dtype not in (torch.int8, torch.uint8):
        raise node.unsupported(f"quantizing to {dtype} is not supported (int8, uint8, float8e4m3fn)")
    zp_present = zero is not None
    lo, hi = _QRANGE[dtype]

    def run(x, scale, zero_point=None):
        if shape is not None:
            scale = scale.reshape(shape)
            zero_point = None if zero_point is None else zero_point.reshape(shape)
        q = torch.round(x.float() / scale.float())
        if zero_point is not None and zp_present:
            q = q + zero_point.float()
        return torch.clamp(q, lo, hi).to(dtype)

    return run


FP8_MAX = 448.0  # float8e4m3fn's largest finite value


def _quantize_fp8(node: NodeSpec, shape, zero):
    """QuantizeLinear to float8e4m3fn: x / scale, saturated to +-448 (saturate=1, the default), then
    rounded to the nearest fp8 value by the conversion."""
    if int(node.attr("saturate", 1)) != 1:
        raise node.unsupported("float8 quantization without saturation is not supported")
    if bool(zero.float().ne(0).any()):
        raise node.unsupported("float8 zero points other than 0 are not supported")

    def run(x, scale, zero_point=None):
        if shape is not None:
            scale = scale.reshape(shape)
        return torch.clamp(x.float() / scale.float(), -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)

    return run


@kernel("DequantizeLinear")
def _dequantize(node):
    shape = _qparams(node)

    def run(q, scale, zero_point=None):
        if shape is not None:
            scale = scale.reshape(shape)
            zero_point = None if zero_point is None else zero_point.reshape(shape)
        if q.dtype == torch.float8_e4m3fn:  # zero points of float8 are 0 (checked where quantized)
            return q.to(scale.dtype) * scale
        x = q.to(torch.int32)
        if zero_point is not None:
            x = x - zero_point.to(torch.int32)
        return x.to(scale.dtype) * scale

    return run
