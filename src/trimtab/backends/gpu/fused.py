"""Kernels of the fused steps `fuse.py` writes (registered in `ops.KERNELS` under `trimtab.*`).

    trimtab.Conv       conv + bias (+ residual add) (+ relu | clip); inputs x, W, B?, Z?
                       attrs: the ONNX Conv attributes, act, clip=[lo, hi]
    trimtab.Linear     x @ W^T + b (+ relu | gelu); inputs x, W[N, K], b?; attrs: act, split (the
                       output's last axis split into several outputs: fused Q/K/V). On CUDA a
                       half-precision linear + GELU times cuBLAS + a GELU pass against the
                       Triton GEMM with GELU in its epilogue and keeps the faster (`run.choice`)
    trimtab.Attention  softmax(q k^T * scale + mask) v; inputs q, k (or kT when attrs k_transposed),
                       v, mask?; attrs scale (None: 1/sqrt(d)), out_scale + out_element (the
                       output quantized for an 8-bit reader). F.scaled_dot_product_attention, or
                       on CUDA the short-sequence Triton kernel (`attention_triton.py`) where
                       timing at build finds it faster (`run.choice`, in the engine's notes)
    trimtab.LayerNorm  layer_norm(x [+ z]) over the last axes; inputs x, scale, bias?, z?; attrs
                       axis, epsilon; quant_scale + quant_element: a second output, the int8/fp8
                       copy for 8-bit layers; stats_only: the first output is each row's
                       (mean, 1 / std) instead of the normalized values, which the 8-bit layers
                       that add them as their residual recompute (`fuse_int8.defer_layer_norm`).
                       On CUDA, over the last axis: one Triton pass (`norm_triton.py`)
    trimtab.FakeQuant  QuantizeLinear -> DequantizeLinear in float (the ONNX rounding, half to even);
                       inputs x, q_scale, q_zero, dq_scale, dq_zero; attrs: lo, hi, axis, element,
                       half (reads and writes x's fp16/bf16 type: the Casts around the pair were
                       folded in; on CUDA, per-tensor symmetric, one Triton pass)
    trimtab.QLinear    8-bit linear layer (`lowbit.qgemm`); inputs x (float, or already 8-bit when
                       x_quantized), W[N, K] float (the float tactic), b?; attrs: element (int8 or
                       float8_e4m3fn), x_scale, w_q [N, K] of that element, col_scale [N], act,
                       split, out_dtype, out_scale (8-bit output for the next QLinear),
                       x_quantized, residual ("add": inputs[3] is added to the output;
                       "norm": inputs[3:7] are a deferred LayerNorm's input, stats, scale
                       and bias, and its output is added). On CUDA the first call times the 8-bit kernel against the
                       float path (fake-quant + F.linear in the artifact's float type) and keeps
                       the faster: `run.tactic["chosen"]`, reported per layer by the engine.
    trimtab.QKVAttention  a fused Q/K/V linear layer (Linear or QLinear, attrs as theirs, linear_op
                       says which) and the attention that reads its outputs through head views;
                       inputs x, W, b?, mask?; attrs heads, offsets ([q, k, v] column offsets),
                       rank (3: one head, 4: [B, H, S, D]), qkv_shapes, attention (the Attention's
                       attrs). On CUDA one Triton kernel (`qkv_attention_triton.py`) or the two
                       steps' own kernels, whichever timing at build finds faster (`run.choice`)
    trimtab.QuantAdd   fq_out(relu(fq_a(a + bias_a) + fq_b(b + bias_b))), every stage optional: an
                       8-bit CNN's residual add with the Q/DQ around it and the bias of the conv
                       before it; inputs a, b, bias_a?, bias_b?; attrs fq_a, fq_b, fq_out ((scale,
                       element) or None), relu. On CUDA one Triton pass (`residual_triton.py`)

On CUDA, a 2-D fp16/bf16 conv with ReLU calls cuDNN's fused conv+bias(+add)+ReLU
(`torch.cudnn_convolution_relu` / `cudnn_convolution_add_relu`); elsewhere the epilogue runs in
place on the conv's output.
"""

from __future__ import annotations

import logging
import os

import torch

from trimtab.backends.gpu import lowbit
import torch.nn.functional as F

from trimtab.backends.gpu.ops import _CONV, KERNELS, NodeSpec, axis_shape, conv_geometry, kernel

log = logging.getLogger(__name__)


def _epilogue(act: str | None, clip: list | None):
    if act == "relu":
        return torch.relu_
    if act == "clip":
        lo, hi = clip
        return lambda y: y.clamp_(lo, hi)
    if act == "gelu":
        return lambda y: F.gelu(y)
    if act == "gelu_tanh":
        return lambda y: F.gelu(y, approximate="tanh")
    if act is None:
        return None
    raise ValueError(f"unknown fused activation {act!r}")


@kernel("trimtab.Conv")
def _fused_conv(node):
    g = conv_geometry(node)
    conv, pre_pad = _CONV[g["spatial"]], g["pre_pad"]
    act = node.attr("act")
    epilogue = _epilogue(act, node.attr("clip"))
    residual = bool(node.attr("residual", False))
    args = (g["strides"], g["padding"], g["dilations"], g["groups"])

    def generic(x, w, b=None, z=None):
        if pre_pad:
            x = F.pad(x, pre_pad)
        y = conv(x, w, b, *args)
        if residual:
            y = y.add_(z)
        return epilogue(y) if epilogue else y

    weight = node.consts[1]
    cudnn_ok = (node.device == "cuda" and g["spatial"] == 2 and not pre_pad and act == "relu"
                and weight is not None and weight.dtype in (torch.float16, torch.bfloat16))
    if not cudnn_ok:
        return generic
    state = {"fused": True}

    def cudnn(x, w, b=None, z=None):
        if state["fused"]:
            try:
                if residual:
                    return torch.cudnn_convolution_add_relu(x, w, z, 1.0, b, *args)
                return torch.cudnn_convolution_relu(x, w, b, *args)
            except RuntimeError as exc:  # first (warm-up) call decides; never during capture
                log.info("cuDNN fused conv unavailable for %s (%s); using conv + in-place ReLU", node.name, exc)
                state["fused"] = False
        return generic(x, w, b, z)

    return cudnn


@kernel("trimtab.Linear")
def _fused_linear(node):
    act = node.attr("act")
    epilogue = _epilogue(act, node.attr("clip"))
    split = node.attr("split")

    def run(x, w, b=None):
        y = F.linear(x, w, b)
        if split:
            return y.split(split, dim=-1)
        return epilogue(y) if epilogue else y

    weight = node.consts[1]
    if (node.device != "cuda" or act != "gelu" or split or weight is None
            or weight.dtype not in (torch.float16, torch.bfloat16)):
        return run
    # fp16/bf16 linear + GELU: cuBLAS then a GELU pass, or trimtab's GEMM kernel with GELU in its
    # epilogue (fp32 sums; lowbit.qgemm on half operands, column scale 1): timed, the faster kept
    ones = torch.ones(weight.shape[0], dtype=torch.float32, device=node.device)

    def fused(x, w, b=None):
        return lowbit.qgemm(x, w, ones, b, "gelu", x.dtype)

    return _chosen_on_first_call({"cublas": run, "triton": fused}, node=node)


@kernel("trimtab.Attention")
def _attention(node):
    scale = node.attr("scale")
    k_transposed = bool(node.attr("k_transposed", False))
    out_q = None
    if node.attr("out_element"):  # the output is quantized for the 8-bit layer that reads it
        out_q = (float(node.attr("out_scale")), getattr(torch, node.attr("out_element")))

    def sdpa(q, k, v, mask=None):
        if k_transposed:
            k = k.transpose(-1, -2)
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return y if out_q is None else lowbit.quantize(y, *out_q)

    if node.device != "cuda":
        return sdpa
    from trimtab.backends.gpu import attention_triton

    def triton_path(q, k, v, mask=None):
        return attention_triton.attention(q, k.transpose(-1, -2) if k_transposed else k, v, mask, scale, out_q)

    def fits(q, k, v, mask=None):
        return attention_triton.supported(q, k.transpose(-1, -2) if k_transposed else k, v, mask)

    return _chosen_on_first_call({"sdpa": sdpa, "triton": triton_path}, fits, node)


@kernel("trimtab.LayerNorm")
def _layer_norm(node):
    rank = len(node.shapes[0])
    axis = int(node.attr("axis", -1)) % rank
    shape, eps = tuple(node.shapes[0][axis:]), float(node.attr("epsilon", 1e-5))
    quant = None
    if node.attr("quant_element"):  # a second output: the 8-bit copy the int8/fp8 layers read
        quant = (float(node.attr("quant_scale")), getattr(torch, node.attr("quant_element")))
    stats_only = bool(node.attr("stats_only", False))

    def generic(x, scale, bias=None, z=None):
        if z is not None:
            x = x + z
        scale = scale if tuple(scale.shape) == shape else scale.expand(shape)
        if bias is not None and tuple(bias.shape) != shape:
            bias = bias.expand(shape)
        if quant is None and not stats_only:
            return F.layer_norm(x, shape, scale, bias, eps)
        y = F.layer_norm(x.float(), shape, scale.float(), None if bias is None else bias.float(), eps)
        first = _row_stats(x, eps) if stats_only else y.to(x.dtype)
        return (first, lowbit.quantize_reference(y, *quant)) if quant else first

    if node.device != "cuda" or axis != rank - 1:
        return generic
    from trimtab.backends.gpu.norm_triton import layer_norm

    def triton_norm(x, scale, bias=None, z=None):
        if tuple(scale.shape) != shape or (bias is not None and tuple(bias.shape) != shape):
            return generic(x, scale, bias, z)
        return layer_norm(x, scale, bias, eps, residual=z, quant=quant, stats_only=stats_only)

    return triton_norm


def _row_stats(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row's (mean, 1 / sqrt(var + eps)) over the last axis, fp32 [..., 2] (the stats_only output)."""
    x = x.float()
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return torch.cat([mean, torch.rsqrt(var + eps)], dim=-1)


@kernel("trimtab.FakeQuant")
def _fake_quant(node):
    lo, hi = float(node.attr("lo")), float(node.attr("hi"))
    axis = node.attr("axis")
    rank = len(node.shapes[0])
    q_scale, q_zero, dq_scale, dq_zero = (node.consts[i] for i in range(1, 5))
    if axis is not None:
        shape = axis_shape(rank, axis, q_scale.numel())
        q_scale, dq_scale = q_scale.reshape(shape), dq_scale.reshape(shape)
        q_zero, dq_zero = q_zero.reshape(shape), dq_zero.reshape(shape)
    element = node.attr("element", "int8")
    if (node.attr("half") and node.device == "cuda" and axis is None and _SYMMETRIC.get(element) == (lo, hi)
            and float(q_zero) == 0 == float(dq_zero) and float(q_scale) == float(dq_scale)):
        scale, dtype = float(q_scale), getattr(torch, element)
        return lambda x, *_: lowbit.fake_quantize(x, scale, dtype, fast=False)  # one pass, x's type in and out
    q_scale, q_zero, dq_zero = q_scale.float(), q_zero.float(), dq_zero.float()
    out_dtype = dq_scale.dtype
    if element == "float8_e4m3fn":  # saturate, then the conversion rounds to fp8
        def run_fp8(x, *_):
            q = torch.clamp(x.float() / q_scale, lo, hi).to(torch.float8_e4m3fn).float()
            return (q * dq_scale.float()).to(x.dtype if node.attr("half") else out_dtype)

        return run_fp8

    def run(x, *_):
        q = torch.clamp(torch.round(x.float() / q_scale) + q_zero, lo, hi)
        return ((q - dq_zero) * dq_scale.float()).to(x.dtype if node.attr("half") else out_dtype)

    return run


_SYMMETRIC = {"int8": (-128.0, 127.0), "float8_e4m3fn": (-448.0, 448.0)}


@kernel("trimtab.QLinear")
def _qlinear(node):
    a = node.attrs
    x_scale, act, split = float(a["x_scale"]), a.get("act"), a.get("split")
    out_scale, x_quantized = a.get("out_scale"), bool(a.get("x_quantized", False))
    out_dtype = getattr(torch, a["out_dtype"])
    element = getattr(torch, a.get("element", "int8"))
    low = str(element).removeprefix("torch.")  # the tactic's name: "int8" or "float8_e4m3fn"
    w_q, col_scale = a["w_q"].to(node.device), a["col_scale"].to(node.device)
    epilogue = _epilogue(act, None)
    # TRIMTAB_GPU_EXACT=1: IEEE division and erf-GELU in the 8-bit kernels (lowbit says what the
    # default fast epilogue does instead)
    fast = os.environ.get("TRIMTAB_GPU_EXACT") != "1"

    def finish(y):
        return y.split(split, dim=-1) if split else y

    def low_path(x, w, b=None, *residual):
        x_q = x if x_quantized else lowbit.quantize(x, x_scale, element, fast=fast)
        return finish(lowbit.qgemm(x_q, w_q, col_scale, b, act, out_dtype, out_scale, fast=fast,
                                   residual=residual or None))

    def float_path(x, w, b=None, *residual):  # the artifact's own arithmetic: fake-quant, then a float GEMM
        if x_quantized:
            x = (x.float() * x_scale).to(w.dtype)
        else:
            x = lowbit.fake_quantize(x, x_scale, element, fast=fast).to(w.dtype)
        y = F.linear(x, w, b)
        y = epilogue(y) if epilogue else y
        if out_scale is not None:
            return finish(lowbit.quantize(y, out_scale, element, fast=fast))
        return finish(lowbit.add_residual(y.to(out_dtype), residual or None))

    paths = {low: low_path}
    state = {"chosen": None, "ms": {}}

    def run(x, w, b=None, *residual):
        if state["chosen"] is None:
            paths[str(w.dtype).removeprefix("torch.")] = float_path
            if node.device == "cuda":
                _choose(state, paths, (x, w, b, *residual), node, "tactic")
            else:
                state["chosen"] = low
        return paths[state["chosen"]](x, w, b, *residual)

    run.tactic = state
    return run


def _chosen_on_first_call(paths: dict, fits=None, node=None):
    """A kernel that, on its first call, times `paths` (`_fastest`) and keeps the fastest; where
    `fits(*args)` is false only the first path is used. Its `choice` attribute ({"chosen", "ms"})
    goes into the engine's notes (`Engine.kernel_choices`). With `node`, a choice an earlier engine
    of the same backend timed for this step at shapes of the same size class is taken as it is."""
    state = {"chosen": None, "ms": {}}

    def run(*args):
        if state["chosen"] is None:
            if fits is None or fits(*args):
                _choose(state, paths, args, node, "kernel")
            else:
                state["chosen"] = next(iter(paths))
        return paths[state["chosen"]](*args)

    run.choice = state
    return run


def _choose(state: dict, paths: dict, args: tuple, node, kind: str) -> None:
    """Fill `state` ({"chosen", "ms"}) for `paths`: from the backend's shared choices when an engine
    timed this step at shapes of the same size class before (`NodeSpec.choice_key`), else by
    timing (`_fastest`), and leave the result there for the next engine."""
    shared = node.choices if node is not None else None
    key = node.choice_key(kind) if shared is not None else None
    if key is not None and key in shared and shared[key][0] in paths:
        state["chosen"], ms = shared[key]
        state["ms"].update(ms)
        return
    state["chosen"] = _fastest(paths, args, state["ms"])
    if key is not None:
        shared[key] = (state["chosen"], dict(state["ms"]))


def _fastest(paths: dict, args: tuple, timings: dict, rounds: int = 7, calls: int = 5) -> str:
    """The path that runs `args` fastest on the GPU: two warm-up calls each (Triton picks its tiles;
    a path that fails is left out: `_runnable`), then each path captured as a CUDA graph of
    `calls` back-to-back calls, and `rounds` rounds that replay every graph once, in turn, so a
    clock still ramping up favours none of them. The graph
    times the GPU work alone, as the engine's graph runner sees it: one plainly timed call also
    timed the Python launch of a Triton kernel (tens of us, more than a small GEMM takes). The
    best time per call of each path goes into `timings` (ms)."""
    paths = _runnable(paths, args)
    torch.cuda.synchronize()
    replays = {name: _captured(path, args, calls) for name, path in paths.items()}
    best = {name: float("inf") for name in paths}
    for _ in range(rounds):
        for name, replay in replays.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            replay()
            end.record()
            end.synchronize()
            best[name] = min(best[name], start.elapsed_time(end) / calls)
    timings.update({name: round(ms, 4) for name, ms in best.items()})
    return min(best, key=best.get)


def _runnable(paths: dict, args: tuple) -> dict:
    """The paths that run `args`, each called twice (Triton compiles and tunes on the first calls).
    One that raises, a kernel this GPU cannot build (fp8 before compute capability 8.9, say), is
    left out with a warning; when none runs, the last error is raised."""
    kept, error = {}, None
    for name, path in paths.items():
        try:
            for _ in range(2):
                path(*args)
        except Exception as exc:  # noqa: BLE001  (any failure of one candidate kernel; the others decide)
            log.warning("kernel choice %r cannot run here (%s: %s); the others are timed", name, type(exc).__name__, exc)
            error = exc
            continue
        kept[name] = path
    if not kept:
        raise error
    return kept


def _captured(path, args: tuple, calls: int):
    """A function that replays `calls` calls of `path` from a CUDA graph (or calls them, where
    capture fails)."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                path(*args)
    except RuntimeError as exc:
        log.info("timing a kernel choice without a CUDA graph (%s)", exc)
        return lambda: [path(*args) for _ in range(calls)]
    return graph.replay


@kernel("trimtab.QKVAttention")
def _qkv_attention(node):
    a = node.attrs
    rank, heads, offsets = int(a["rank"]), int(a["heads"]), [int(o) for o in a["offsets"]]
    weight, bias = node.consts[1], node.consts[2] if len(node.consts) > 2 else None
    linear = KERNELS[a["linear_op"]](NodeSpec(
        a["linear_op"], node.name, {k: v for k, v in a.items() if k not in _QKV_ATTENTION_ATTRS},
        [None, weight, bias], node.shapes[:3], node.opset, node.present[:3], node.device, node.choices))
    qkv_shapes = [tuple(shape) for shape in a["qkv_shapes"]]
    mask_present = len(node.present) > 3 and node.present[3]
    attention = KERNELS["trimtab.Attention"](NodeSpec(
        "trimtab.Attention", node.name, dict(a["attention"]), [None] * 4,
        [*qkv_shapes, node.shapes[3] if mask_present else None], node.opset, [True, True, True, mask_present],
        node.device, node.choices))

    def views(outputs):
        by_offset = dict(zip(_split_starts(a["split"]), outputs))
        q, k, v = (by_offset[offset] for offset in offsets)
        if rank == 3:
            return q, k.transpose(1, 2), v
        return tuple(t.reshape(shape[0], shape[2], shape[1], shape[3]).transpose(1, 2) for t, shape in
                     zip((q, k, v), qkv_shapes))

    def separate(x, w, b=None, mask=None):
        return attention(*views(linear(x, w, b)), mask)

    if node.device != "cuda":
        if hasattr(linear, "tactic"):
            separate.tactic = linear.tactic  # the 8-bit Q/K/V product, reported per layer
        return separate
    fused = _qkv_attention_fused(a, rank, heads, offsets, weight)
    run = _chosen_on_first_call({"separate": separate, "fused": fused}, fused.fits, node)
    # the layer's precision as the report shows it: the Q/K/V product ran 8-bit in the fused kernel
    tactic = {"chosen": None, "ms": {}}
    if a["linear_op"] == "trimtab.QLinear":
        def traced(*args):
            out = run(*args)
            if tactic["chosen"] is None:
                low = a.get("element", "int8")
                tactic["chosen"] = low if run.choice["chosen"] == "fused" else linear.tactic["chosen"]
                fused_ms = run.choice["ms"].get("fused")
                tactic["ms"] = {**linear.tactic["ms"], **({f"{low} with attention": fused_ms} if fused_ms else {})}
            return out

        traced.tactic, traced.choice = tactic, run.choice
        return traced
    return run


_QKV_ATTENTION_ATTRS = ("linear_op", "heads", "offsets", "rank", "qkv_shapes", "attention")


def _split_starts(split: list) -> list[int]:
    return [sum(split[:i]) for i in range(len(split))]


def _qkv_attention_fused(a: dict, rank: int, heads: int, offsets: list, weight: torch.Tensor):
    """The one-kernel path of a `trimtab.QKVAttention` step (CUDA), with `fits` saying whether a
    call's operands suit it."""
    from trimtab.backends.gpu import qkv_attention_triton as kernel

    attention = a["attention"]
    out_q = None
    if attention.get("out_element"):
        out_q = (float(attention["out_scale"]), getattr(torch, attention["out_element"]))
    half = getattr(torch, a.get("out_dtype") or str(weight.dtype).removeprefix("torch."))
    low = a.get("w_q") is not None
    element = getattr(torch, a.get("element", "int8"))
    w = a["w_q"].to("cuda") if low else None
    col_scale = a["col_scale"].to("cuda") if low else None
    x_scale, x_quantized = float(a.get("x_scale", 1.0)), bool(a.get("x_quantized", False))

    def operands(x, w_float, mask):
        if low and not x_quantized:
            x = lowbit.quantize(x, x_scale, element)
        if mask is not None and rank == 3:  # [N, 1 | L, L] scores of one head: the head axis is 1
            mask = mask.reshape((1,) * (3 - mask.dim()) + tuple(mask.shape)).unsqueeze(1)
        return x, (w if low else w_float), mask

    def run(x, w_float, b=None, mask=None):
        x, w_op, mask = operands(x, w_float, mask)
        out = kernel.qkv_attention(x, w_op, col_scale, b, tuple(offsets), heads, mask, attention.get("scale"), half, out_q)
        return out.squeeze(1) if rank == 3 else out

    def fits(x, w_float, b=None, mask=None):
        if x.dim() != 3 or half not in (torch.float16, torch.bfloat16) or sorted(offsets) != _split_starts(a["split"]):
            return False
        x, w_op, mask = operands(x, w_float, mask)
        return kernel.supported(x, w_op, heads, mask)

    run.fits = fits
    return run


@kernel("trimtab.QuantAdd")
def _quant_add(node):
    spec = {k: node.attr(k) for k in ("fq_a", "fq_b", "fq_out")}
    relu = bool(node.attr("relu", False))
    channel_view = [1, -1] + [1] * (len(node.shapes[0]) - 2)

    def fq(x, which):
        scale, element = spec[which]
        return lowbit.fake_quantize(x, scale, getattr(torch, element), fast=False)

    def stages(x, bias, which):
        if bias is not None:
            x = x + bias.to(x.dtype).reshape(channel_view)
        return fq(x, which) if spec[which] else x

    def generic(a, b, bias_a=None, bias_b=None):
        y = stages(a, bias_a, "fq_a") + stages(b, bias_b, "fq_b")
        if relu:
            y = torch.relu(y)
        return fq(y, "fq_out") if spec["fq_out"] else y

    if node.device != "cuda":
        return generic
    from trimtab.backends.gpu.residual_triton import quant_add_kernel

    codes = {None: 0, "int8": 1, "float8_e4m3fn": 2}

    def one_pass(a, b, bias_a=None, bias_b=None):
        if a.numel() >= 2**31 or not _flat_channels_last(a, b, bias_a is not None or bias_b is not None):
            return generic(a, b, bias_a, bias_b)
        y, n = torch.empty_like(a), a.numel()
        scale = {k: v[0] if v else 1.0 for k, v in spec.items()}
        element = {k: codes[v[1] if v else None] for k, v in spec.items()}
        channels = a.shape[1] if a.dim() > 2 else a.shape[-1]
        quant_add_kernel[(-(-n // 4096),)](
            a, b, a if bias_a is None else bias_a, a if bias_b is None else bias_b, y, n, channels,
            scale["fq_a"], scale["fq_b"], scale["fq_out"], HAS_BIAS_A=bias_a is not None,
            HAS_BIAS_B=bias_b is not None, ELEMENT_A=element["fq_a"], ELEMENT_B=element["fq_b"], RELU=relu,
            ELEMENT_OUT=element["fq_out"], BLOCK=4096, num_warps=8)
        return y

    return one_pass


def _flat_channels_last(a: torch.Tensor, b: torch.Tensor, channels: bool) -> bool:
    """a and b half tensors lying the same way in memory, densely, so one flat pass lines up; with
    per-channel terms the channel must be the fastest axis (channels_last 4-D, or 2-D)."""
    if a.dtype != b.dtype or a.dtype not in (torch.float16, torch.bfloat16):
        return False
    if a.shape != b.shape or a.stride() != b.stride():
        return False
    if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last):
        return True
    return a.is_contiguous() and (not channels or a.dim() == 2)
