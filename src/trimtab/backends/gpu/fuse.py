"""Rewrites of a lowered `Plan` (in place), in this order:

1. `fold_batch_norm`: Conv (constant W, B) -> BatchNormalization (constant stats) becomes one Conv
   with W' = W * g, B' = (B - mean) * g + beta, g = scale / sqrt(var + eps).
2. `fuse_qdq`: QuantizeLinear -> DequantizeLinear on an activation becomes one `trimtab.FakeQuant`
   (weight Q/DQ were already folded to float constants by lowering).
3. `fuse_conv`: Conv -> [Add(residual of the same shape)] -> [Relu | Clip] becomes `trimtab.Conv`.
4. `fuse_linear`: MatMul(x, constant 2-D W) -> [Add(constant bias)] and Gemm(x, constant B, [C])
   become `trimtab.Linear` (weight stored as [N, K]); the erf GELU that follows (Div(sqrt 2) -> Erf
   -> Add(1) -> Mul(x) -> Mul(0.5)) and a Relu fold into its epilogue.
5.-7. `fuse_transformer`: Q/K/V projections as one GEMM, attention as one
   scaled_dot_product_attention, fp16 LayerNorm (+ residual Add) without the Casts around it.
8.-12. `fuse_int8`: linear layers of int8 Q/DQ artifacts as int8 GEMMs (`trimtab.QLinear`), and
   int8 outputs where only int8 layers read them, LayerNorms and attention writing 8-bit data,
   fake-quant in fp16 without the Casts around it. (8 runs before 7, whose LayerNorm rewrite then
   sees the int8 layers.)
13. `fuse_mask.narrow_masks`: an attention mask whose values vary along fewer axes than its shape
   has (BERT's padding mask, [B, 1, S, S] built from [B, 1, 1, S]) is computed at the smaller
   shape and expanded as a view.

A node is absorbed only when the tensor between it and the step before is read by nobody else and
is not a graph output. Every rewrite is counted in `plan.notes["fusions"]`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import torch

from trimtab.backends.gpu.plan import Plan, Step


class _Index:
    def __init__(self, plan: Plan) -> None:
        self.producer: dict[str, Step] = {}
        self.consumers: dict[str, list[Step]] = defaultdict(list)
        for step in plan.steps:
            for name in step.outputs:
                self.producer[name] = step
            for name in step.inputs:
                if name:
                    self.consumers[name].append(step)
        self.protected = set(plan.outputs)

    def sole_consumer(self, name: str) -> Step | None:
        readers = self.consumers.get(name, [])
        if len(readers) != 1 or name in self.protected:
            return None
        return readers[0]


def fuse(plan: Plan, quantized: dict | None = None) -> None:
    """`quantized`: folded weight name -> `lower.QuantizedWeight` (its int8 source), which lets
    linear layers fed by a FakeQuant become int8 GEMMs (`fuse_int8.py`)."""
    counts: Counter = Counter()
    counts["batch_norm_folded"] = fold_batch_norm(plan)
    counts["fake_quant"] = fuse_qdq(plan)
    counts["conv"] = fuse_conv(plan)
    counts["linear"], counts["gelu"] = fuse_linear(plan, quantized or {})
    from trimtab.backends.gpu.fuse_int8 import (defer_layer_norm, fuse_attention_quant, fuse_half_fake_quant,
                                                  fuse_int8_linear, fuse_norm_quant, fuse_requant, fuse_residual_add,
                                                  fuse_residual_quant)
    from trimtab.backends.gpu.fuse_transformer import fuse_attention, fuse_layer_norm, fuse_qkv, fuse_qkv_attention

    counts["qkv"] = fuse_qkv(plan)
    counts["attention"] = fuse_attention(plan)
    counts["int8_linear"] = fuse_int8_linear(plan)
    _prune(plan)
    counts["layer_norm"] = fuse_layer_norm(plan)
    counts["int8_output"] = fuse_requant(plan)
    counts["norm_quant"] = fuse_norm_quant(plan)
    counts["attention_quant"] = fuse_attention_quant(plan)
    counts["half_fake_quant"] = fuse_half_fake_quant(plan)
    counts["residual_quant"] = fuse_residual_quant(plan)
    counts["residual_epilogue"] = fuse_residual_add(plan)
    counts["deferred_norm"] = defer_layer_norm(plan)
    counts["qkv_attention"] = fuse_qkv_attention(plan)
    from trimtab.backends.gpu.fuse_mask import narrow_masks

    counts["narrow_mask"] = narrow_masks(plan)
    plan.notes["fusions"] = {k: v for k, v in counts.items() if v}
    _prune(plan)


def _const(plan: Plan, name: str) -> torch.Tensor | None:
    return plan.constants.get(name) if name else None


def _scalar(plan: Plan, name: str) -> float | None:
    value = _const(plan, name)
    if value is None or value.numel() != 1:
        return None
    return float(value.reshape(-1)[0])


def _new_const(plan: Plan, base: str, value: torch.Tensor) -> str:
    name, index = f"{base}__fused", 0
    while name in plan.constants or name in plan.shapes:
        index += 1
        name = f"{base}__fused{index}"
    plan.constants[name] = value
    plan.shapes[name] = list(value.shape)
    plan.dtypes[name] = str(value.dtype).removeprefix("torch.")
    return name


def _absorb(plan: Plan, head: Step, tail: Step) -> None:
    """`head` takes over `tail`'s outputs and its place (a later one: the tail's other inputs, a
    residual branch say, are computed by then); `tail` is removed."""
    head.outputs = list(tail.outputs)
    head.fused.append(tail.name)
    plan.steps.remove(head)
    plan.steps[plan.steps.index(tail)] = head


def _prune(plan: Plan) -> None:
    """Drop steps whose outputs nobody reads, then constants nobody reads."""
    while True:
        used = set(plan.outputs) | {name for step in plan.steps for name in step.inputs}
        keep = [step for step in plan.steps if any(o in used for o in step.outputs)]
        if len(keep) == len(plan.steps):
            break
        plan.steps = keep
    used = set(plan.outputs) | {name for step in plan.steps for name in step.inputs}
    plan.constants = {k: v for k, v in plan.constants.items() if k in used}


def _conv_with_constant_weights(plan: Plan, step) -> bool:
    """A Conv whose weight (and bias, if any) are constants: the only convs that fold or fuse."""
    if step.op != "Conv" or _const(plan, step.inputs[1]) is None:
        return False
    return not (len(step.inputs) > 2 and step.inputs[2] and _const(plan, step.inputs[2]) is None)


# 1. BatchNormalization into Conv -------------------------------------------------------------------
def fold_batch_norm(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for conv in list(plan.steps):
        if not _conv_with_constant_weights(plan, conv):
            continue
        bn = index.sole_consumer(conv.outputs[0])
        if bn is None or bn.op != "BatchNormalization" or len(bn.outputs) > 1:
            continue
        params = [_const(plan, name) for name in bn.inputs[1:5]]
        if any(p is None for p in params):
            continue
        scale, beta, mean, var = (p.double() for p in params)
        weight = _const(plan, conv.inputs[1])
        g = scale / torch.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        bias = _const(plan, conv.inputs[2]) if len(conv.inputs) > 2 else None
        bias = torch.zeros_like(mean) if bias is None else bias.double()
        new_w = (weight.double() * g.reshape(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype)
        new_b = ((bias - mean) * g + beta).to(weight.dtype)
        conv.inputs = [conv.inputs[0], _new_const(plan, conv.inputs[1], new_w), _new_const(plan, f"{conv.name}_bias", new_b)]
        _absorb(plan, conv, bn)
        index, done = _Index(plan), done + 1
    return done


# 2. Q -> DQ pairs into FakeQuant ------------------------------------------------------------------
_QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "float8_e4m3fn": (-448, 448)}


def fuse_qdq(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for q in list(plan.steps):
        if q.op != "QuantizeLinear":
            continue
        dq = index.sole_consumer(q.outputs[0])
        if dq is None or dq.op != "DequantizeLinear":
            continue
        q_scale, dq_scale = _const(plan, q.inputs[1]), _const(plan, dq.inputs[1])
        q_zero = _const(plan, q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] else None
        dq_zero = _const(plan, dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] else None
        if q_scale is None or dq_scale is None:
            continue
        dtype = plan.dtypes[q.outputs[0]]
        if dtype not in _QRANGE:
            continue
        axis = None
        if q_scale.numel() > 1:
            rank = len(plan.shapes[q.inputs[0]])
            axis = int(q.attrs.get("axis", 1)) % rank
            if dq_scale.numel() != q_scale.numel() or int(dq.attrs.get("axis", 1)) % rank != axis:
                continue
        zeros = torch.zeros_like(q_scale, dtype=getattr(torch, dtype))
        lo, hi = _QRANGE[dtype]
        step = Step("trimtab.FakeQuant", q.name, [
            q.inputs[0], q.inputs[1],
            q.inputs[2] if q_zero is not None else _new_const(plan, f"{q.name}_zero", zeros),
            dq.inputs[1],
            dq.inputs[2] if dq_zero is not None else _new_const(plan, f"{dq.name}_zero", zeros),
        ], list(dq.outputs), {"lo": lo, "hi": hi, "axis": axis, "element": dtype}, [dq.name])
        plan.steps[plan.steps.index(q)] = step
        plan.steps.remove(dq)
        index, done = _Index(plan), done + 1
    return done


# 3. Conv epilogues ------------------------------------------------------------------------------
def _activation(plan: Plan, step: Step) -> tuple[str, list | None] | None:
    if step.op == "Relu":
        return "relu", None
    if step.op == "Clip":
        if plan.opset < 11:
            lo, hi = step.attrs.get("min"), step.attrs.get("max")
        else:
            names = step.inputs[1:3] + [""] * (3 - len(step.inputs))
            if any(n and _const(plan, n) is None for n in names[:2]):
                return None
            lo, hi = (_scalar(plan, n) if n else None for n in names[:2])
        return "clip", [lo, hi]
    return None


def fuse_conv(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for conv in list(plan.steps):
        if not _conv_with_constant_weights(plan, conv):
            continue
        inputs = (conv.inputs + ["", ""])[:3]
        attrs = dict(conv.attrs)
        conv.op = "trimtab.Conv"
        nxt = index.sole_consumer(conv.outputs[0])
        if nxt is not None and nxt.op == "Add" and len(nxt.inputs) == 2:
            other = nxt.inputs[1] if nxt.inputs[0] == conv.outputs[0] else nxt.inputs[0]
            if (other != conv.outputs[0] and other not in plan.constants
                    and plan.shapes.get(other) == plan.shapes[conv.outputs[0]]
                    and plan.dtypes.get(other) == plan.dtypes[conv.outputs[0]]):
                inputs.append(other)
                attrs["residual"] = True
                _absorb(plan, conv, nxt)
                inputs[2] = _take_branch_bias(plan, index, other, inputs[2], conv.name)
                nxt = index.sole_consumer(nxt.outputs[0])
        act = _activation(plan, nxt) if nxt is not None else None
        if act is not None:
            attrs["act"], attrs["clip"] = act
            _absorb(plan, conv, nxt)
        conv.inputs, conv.attrs = inputs, attrs
        index, done = _Index(plan), done + 1
    return done


def _take_branch_bias(plan: Plan, index: _Index, branch: str, bias: str, name: str) -> str:
    """conv(x) + b + (conv'(x') + b'): when the residual branch is a conv of its own whose output only
    this sum reads (ResNet's downsampling 1x1 conv), its bias b' moves into b. That conv then runs
    without a bias, which PyTorch would add in a separate pass over its whole output."""
    other = index.producer.get(branch)
    if (other is None or not _conv_with_constant_weights(plan, other) or len(other.inputs) < 3 or not other.inputs[2]
            or index.sole_consumer(branch) is None or other.op != "Conv"):
        return bias
    own = _const(plan, bias) if bias else None
    moved = _const(plan, other.inputs[2])
    if moved.dim() != 1 or (own is not None and own.shape != moved.shape):
        return bias
    other.inputs = other.inputs[:2]
    total = moved.double() if own is None else own.double() + moved.double()
    return _new_const(plan, f"{name}_bias", total.to(moved.dtype))


# 4. Linear layers --------------------------------------------------------------------------------
def fuse_linear(plan: Plan, quantized: dict) -> tuple[int, int]:
    """Returns (linear layers made, erf GELUs folded into them). A weight folded from int8
    (`quantized`) also goes into the step's attrs as `w_q` [N, K] int8 and `w_scale` [N]."""
    index, done, gelus = _Index(plan), 0, 0
    for step in list(plan.steps):
        weight = _linear_weight(plan, step)
        if weight is None:
            continue
        bias_name = ""
        if step.op == "Gemm" and len(step.inputs) > 2 and step.inputs[2]:
            bias_name = step.inputs[2]
        int8_weight = _int8_weight(step, quantized.get(step.inputs[1]), weight.shape)
        step.op, step.attrs = "trimtab.Linear", dict(int8_weight or {})
        step.inputs = [step.inputs[0], _new_const(plan, step.inputs[1], weight), bias_name]
        nxt = index.sole_consumer(step.outputs[0])
        if not bias_name and nxt is not None and nxt.op == "Add":
            other = nxt.inputs[1] if nxt.inputs[0] == step.outputs[0] else nxt.inputs[0]
            bias = _const(plan, other)
            if bias is not None and bias.dim() == 1 and bias.shape[0] == weight.shape[0] and bias.dtype == weight.dtype:
                step.inputs[2] = other
                _absorb(plan, step, nxt)
                nxt = index.sole_consumer(step.outputs[0])
        if nxt is not None and nxt.op == "Relu":
            step.attrs["act"] = "relu"
            _absorb(plan, step, nxt)
        else:
            gelu = _erf_gelu(plan, index, step.outputs[0])
            if gelu is not None:
                step.attrs["act"] = "gelu"
                for node in gelu[:-1]:
                    plan.steps.remove(node)
                    step.fused.append(node.name)
                _absorb(plan, step, gelu[-1])
                gelus += 1
        index, done = _Index(plan), done + 1
    return done, gelus


def _int8_weight(step: Step, source, shape) -> dict | None:
    """{"w_q": [N, K] int8, "w_scale": [N] fp32} from the weight's int8 source, when its scales run
    along the output channels (or are one value)."""
    if source is None:
        return None
    n_major = step.op == "Gemm" and step.attrs.get("transB", 0)  # weight stored [N, K]
    out_axis = 0 if n_major else 1
    if source.axis not in (None, out_axis):
        return None
    q = source.q if n_major else source.q.t()
    if tuple(q.shape) != tuple(shape):
        return None
    scale = source.scale.expand(shape[0]) if source.axis is None else source.scale
    return {"w_q": q.contiguous(), "w_scale": scale.float().contiguous()}


def _linear_weight(plan: Plan, step: Step) -> torch.Tensor | None:
    """The [N, K] weight for F.linear, or None when `step` is not a linear layer."""
    if step.op == "MatMul":
        w = _const(plan, step.inputs[1])
        if w is None or w.dim() != 2 or len(plan.shapes[step.inputs[0]]) < 2 or step.inputs[0] in plan.constants:
            return None
        return w.t().contiguous()
    if step.op == "Gemm":
        w = _const(plan, step.inputs[1])
        if (w is None or step.inputs[0] in plan.constants or step.attrs.get("transA", 0)
                or step.attrs.get("alpha", 1.0) != 1.0 or step.attrs.get("beta", 1.0) != 1.0):
            return None
        if len(step.inputs) > 2 and step.inputs[2]:
            c = _const(plan, step.inputs[2])
            if c is None or c.numel() != w.shape[0 if step.attrs.get("transB", 0) else 1] or c.dim() != 1:
                return None
        return w.contiguous() if step.attrs.get("transB", 0) else w.t().contiguous()
    return None


def _erf_gelu(plan: Plan, index: _Index, x: str) -> list[Step] | None:
    """The five steps of x * 0.5 * (1 + erf(x / sqrt 2)) reading `x`, in order, or None."""
    readers = index.consumers.get(x, [])
    if len(readers) != 2 or x in index.protected:
        return None
    div = next((s for s in readers if s.op in ("Div", "Mul") and s.inputs[0] == x), None)
    mul = next((s for s in readers if s.op == "Mul" and s is not div), None)
    if div is None or mul is None:
        return None
    c = _scalar(plan, div.inputs[1])
    if c is None or not math.isclose(c if div.op == "Div" else 1 / c, math.sqrt(2), rel_tol=1e-3):
        return None
    erf = index.sole_consumer(div.outputs[0])
    if erf is None or erf.op != "Erf":
        return None
    add = index.sole_consumer(erf.outputs[0])
    if add is None or add.op != "Add":
        return None
    one = add.inputs[1] if add.inputs[0] == erf.outputs[0] else add.inputs[0]
    if _scalar(plan, one) != 1.0 or index.sole_consumer(add.outputs[0]) is not mul:
        return None
    half = index.sole_consumer(mul.outputs[0])
    if half is None or half.op != "Mul":
        return None
    other = half.inputs[1] if half.inputs[0] == mul.outputs[0] else half.inputs[0]
    if _scalar(plan, other) != 0.5:
        return None
    return [div, erf, add, mul, half]
