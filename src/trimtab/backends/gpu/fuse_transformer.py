"""Transformer rewrites of a lowered `Plan` (in place), run after `fuse.fuse_linear`:

5. `fuse_qkv`: linear layers (`trimtab.Linear`, no activation) that read the same tensor become one
   linear layer over their concatenated weights whose output is split back (one GEMM, not three).
6. `fuse_attention`: MatMul(q, kT) -> [Mul | Div by a constant] -> [Add(mask)] -> [Cast] ->
   Softmax(last axis) -> [Cast] -> MatMul(., v) (3-D or 4-D) becomes one `trimtab.Attention`
   (`F.scaled_dot_product_attention`: the score matrix is never written; its softmax runs in fp32
   inside the kernel, which is what the Casts build_fp16 puts around Softmax asked for). A
   Transpose(perm [0, 2, 3, 1]) that makes kT for this MatMul alone is changed to [0, 2, 1, 3].
7. `fuse_layer_norm`: Cast(fp16 -> fp32) -> LayerNormalization(fp32 scale, bias) -> Cast(-> fp16)
   becomes one `trimtab.LayerNorm` on the fp16 tensor with fp16 scale and bias (PyTorch's kernel
   accumulates the mean and variance in fp32), and Add(a, b) feeding it is folded in as a residual.
   Int8 linear layers that quantize the fp32 output read the fp16 copy (`_quantize_half_copy`).
11. `fuse_qkv_attention` (run last): a fused Q/K/V linear layer (`trimtab.Linear` or the 8-bit
   `trimtab.QLinear`, half-precision output) whose three outputs reach one `trimtab.Attention`
   only through the head views (Reshape to [B, S, H, D] + Transpose [0, 2, 1, 3]; or, with one
   head, none for q and v and Transpose [0, 2, 1] for k) becomes one `trimtab.QKVAttention`: on
   CUDA one kernel (`qkv_attention_triton.py`) where timing at build finds it faster than the two.

Same rule as fuse.py: a node is absorbed only when the tensor it reads from the chain has no
other reader and is not a graph output.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from trimtab.backends.gpu.fuse import _absorb, _const, _Index, _new_const, _scalar
from trimtab.backends.gpu.plan import Plan, Step

_HALF = ("float16", "bfloat16")


# 5. Q, K, V projections as one GEMM ---------------------------------------------------------------
def fuse_qkv(plan: Plan) -> int:
    readers: dict[str, list[Step]] = defaultdict(list)
    for step in plan.steps:
        if step.op == "trimtab.Linear" and not step.attrs.get("act") and not step.attrs.get("split"):
            readers[step.inputs[0]].append(step)
    done = 0
    for x, group in readers.items():
        weights = [_const(plan, s.inputs[1]) for s in group]
        biased = {bool(s.inputs[2]) for s in group}
        if len(group) < 2 or len(biased) != 1 or len({(w.shape[1], w.dtype) for w in weights}) != 1:
            continue
        first = min(group, key=plan.steps.index)
        sizes = [int(w.shape[0]) for w in weights]
        biases = [_const(plan, s.inputs[2]) for s in group] if biased.pop() else None
        first.inputs = [x, _new_const(plan, f"{first.name}_qkv_w", torch.cat(weights)), ""]
        if biases is not None:
            first.inputs[2] = _new_const(plan, f"{first.name}_qkv_b", torch.cat(biases))
        int8 = {}
        if all("w_q" in s.attrs for s in group):  # int8 weights travel with the float ones
            int8 = {key: torch.cat([s.attrs[key] for s in group]) for key in ("w_q", "w_scale")}
        first.attrs = {"split": sizes, **int8}
        outputs = [s.outputs[0] for s in group]
        for step in group:
            if step is not first:
                first.fused.append(step.name)
                plan.steps.remove(step)
        first.outputs = outputs
        done += 1
    return done


# 6. Attention ------------------------------------------------------------------------------------
def _other(step: Step, name: str) -> str:
    return step.inputs[1] if step.inputs[0] == name else step.inputs[0]


def _is_cast(plan: Plan, step: Step | None) -> bool:
    return step is not None and step.op == "Cast" and plan.dtypes.get(step.outputs[0]) in ("float32", *_HALF)


def fuse_attention(plan: Plan) -> int:
    done = 0
    for softmax in [s for s in plan.steps if s.op == "Softmax"]:
        index = _Index(plan)
        match = _match_attention(plan, index, softmax)
        if match is None:
            continue
        scores, scale, mask, removed, out = match
        q, kt = scores.inputs
        transpose = index.producer.get(kt)
        k_transposed = True
        if (transpose is not None and transpose.op == "Transpose" and list(transpose.attrs.get("perm", [])) == [0, 2, 3, 1]
                and index.sole_consumer(kt) is scores):
            transpose.attrs["perm"] = [0, 2, 1, 3]
            plan.shapes[kt] = [plan.shapes[kt][i] for i in (0, 1, 3, 2)]
            k_transposed = False
        v = _other(out, removed[-1].outputs[0])
        head = Step("trimtab.Attention", scores.name, [q, kt, v, mask], list(out.outputs),
                    {"scale": scale, "k_transposed": k_transposed}, [s.name for s in removed[1:]] + [out.name])
        plan.steps[plan.steps.index(out)] = head
        for step in removed:
            plan.steps.remove(step)
        done += 1
    return done


def _match_attention(plan: Plan, index: _Index, softmax: Step):
    """(scores MatMul, scale, mask name or "", steps to remove in order, final MatMul) or None."""
    rank = len(plan.shapes[softmax.inputs[0]])
    default_axis = -1 if plan.opset >= 13 else 1
    if rank not in (3, 4) or int(softmax.attrs.get("axis", default_axis)) % rank != rank - 1:
        return None
    chain, name = [softmax], softmax.inputs[0]
    producer = index.producer.get(name)
    if _is_cast(plan, producer) and index.sole_consumer(name) is softmax:
        chain.insert(0, producer)
        name, producer = producer.inputs[0], index.producer.get(producer.inputs[0])
    mask = ""
    if producer is not None and producer.op == "Add" and index.sole_consumer(name) is chain[0]:
        left, right = (index.producer.get(n) for n in producer.inputs)
        pick = 0 if left is not None and left.op in ("MatMul", "Mul", "Div") else 1
        mask = producer.inputs[1 - pick]
        chain.insert(0, producer)
        name = producer.inputs[pick]
        producer = index.producer.get(name)
    scale = None
    if producer is not None and producer.op in ("Mul", "Div") and index.sole_consumer(name) is chain[0]:
        c = _scalar(plan, producer.inputs[1])
        if c is None and producer.op == "Mul":
            c = _scalar(plan, producer.inputs[0])
        if c is None or c == 0:
            return None
        scale = c if producer.op == "Mul" else 1.0 / c
        chain.insert(0, producer)
        name = producer.inputs[0] if _const(plan, producer.inputs[0]) is None else producer.inputs[1]
        producer = index.producer.get(name)
    if (producer is None or producer.op != "MatMul" or index.sole_consumer(name) is not chain[0]
            or any(_const(plan, n) is not None or len(plan.shapes[n]) != rank for n in producer.inputs)):
        return None
    scores = producer
    if mask and len(plan.shapes[mask]) > rank:
        return None
    tail = index.sole_consumer(softmax.outputs[0])
    if _is_cast(plan, tail):
        chain.append(tail)
        tail = index.sole_consumer(tail.outputs[0])
    if tail is None or tail.op != "MatMul" or tail.inputs[0] != chain[-1].outputs[0]:
        return None
    dtypes = {plan.dtypes[n] for n in (*scores.inputs, tail.inputs[1], tail.outputs[0])}
    if len(dtypes) != 1 or dtypes.pop() not in ("float32", *_HALF):
        return None
    return scores, scale, mask, [scores, *chain], tail


# 7. LayerNorm in half precision ---------------------------------------------------------------------
def fuse_layer_norm(plan: Plan) -> int:
    done = 0
    for norm in [s for s in plan.steps if s.op == "LayerNormalization"]:
        _quantize_half_copy(plan, _Index(plan), norm)
        index = _Index(plan)
        cast_in, cast_out = index.producer.get(norm.inputs[0]), index.sole_consumer(norm.outputs[0])
        if (len(norm.outputs) > 1 or not _is_cast(plan, cast_in) or not _is_cast(plan, cast_out)
                or index.sole_consumer(cast_in.outputs[0]) is not norm):
            continue
        half = plan.dtypes[cast_in.inputs[0]]
        if half not in _HALF or plan.dtypes[cast_out.outputs[0]] != half or plan.dtypes[norm.outputs[0]] != "float32":
            continue
        params = [_const(plan, n) if n else None for n in (norm.inputs + [""])[1:3]]
        if params[0] is None or (len(norm.inputs) > 2 and norm.inputs[2] and params[1] is None):
            continue
        dtype = getattr(torch, half)
        inputs = [cast_in.inputs[0]] + [_new_const(plan, f"{norm.name}_{what}", p.to(dtype)) if p is not None else ""
                                       for what, p in zip(("scale", "bias"), params)]
        head = Step("trimtab.LayerNorm", norm.name, inputs, list(norm.outputs),
                    {"axis": int(norm.attrs.get("axis", -1)), "epsilon": float(norm.attrs.get("epsilon", 1e-5))},
                    [cast_in.name])
        plan.steps[plan.steps.index(norm)] = head
        plan.steps.remove(cast_in)
        _absorb(plan, head, cast_out)
        add = index.producer.get(head.inputs[0])
        if (add is not None and add.op == "Add" and index.sole_consumer(add.outputs[0]) is cast_in
                and all(_const(plan, n) is None and plan.shapes[n] == plan.shapes[add.outputs[0]] for n in add.inputs)):
            head.inputs = [add.inputs[0], head.inputs[1], head.inputs[2], add.inputs[1]]
            head.fused.insert(0, add.name)
            plan.steps.remove(add)
        done += 1
    return done


def _quantize_half_copy(plan: Plan, index: _Index, norm: Step) -> None:
    """int8 + fp16 artifacts: the fp32 LayerNorm output feeds a Cast to fp16 (the residual path) and
    the int8 linear layers' quantizers. Those read the fp16 copy instead, so the LayerNorm can run
    in fp16 like the rest (the value is rounded to fp16 before it is quantized to int8: a step 2^-11
    of the value, far below the int8 step)."""
    out = norm.outputs[0]
    readers = index.consumers.get(out, [])
    casts = [r for r in readers if _is_cast(plan, r) and plan.dtypes[r.outputs[0]] in _HALF]
    others = [r for r in readers if r not in casts]
    if (len(casts) != 1 or not others or out in index.protected
            or not all(r.op == "trimtab.QLinear" and r.inputs[0] == out and out not in r.inputs[1:] for r in others)):
        return
    for reader in others:
        reader.inputs[0] = casts[0].outputs[0]
    plan.steps.remove(casts[0])  # the copy is made right after the norm, before its new readers
    plan.steps.insert(plan.steps.index(norm) + 1, casts[0])


# 11. Q/K/V projection + attention -----------------------------------------------------------------
def fuse_qkv_attention(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for attention in [s for s in plan.steps if s.op == "trimtab.Attention"]:
        match = _match_qkv_attention(plan, index, attention)
        if match is None:
            continue
        linear, views, rank, heads, offsets = match
        attrs = {key: value for key, value in linear.attrs.items()}
        attrs.update(linear_op=linear.op, heads=heads, offsets=offsets, rank=rank,
                     qkv_shapes=[list(plan.shapes[n]) for n in attention.inputs[:3]],
                     attention={k: v for k, v in attention.attrs.items()})
        fused = Step("trimtab.QKVAttention", linear.name, [*linear.inputs[:3], attention.inputs[3]],
                     list(attention.outputs), attrs, [*linear.fused, *(v.name for v in views), attention.name,
                                                      *attention.fused])
        plan.steps[plan.steps.index(attention)] = fused
        for step in [linear, *views]:
            plan.steps.remove(step)
        index, done = _Index(plan), done + 1
    return done


def _match_qkv_attention(plan: Plan, index: _Index, attention: Step):
    """(linear step, view steps, rank, heads, [q, k, v] column offsets in the linear's output) or None."""
    rank = len(plan.shapes[attention.inputs[0]])
    if len(attention.inputs) < 4 or attention.attrs.get("k_transposed") != (rank == 3):
        return None
    sources, views = [], []
    for position, name in enumerate(attention.inputs[:3]):
        chain = _head_views(plan, index, name, rank, transposed_key=position == 1 and rank == 3)
        if chain is None:
            return None
        source, steps = chain
        sources.append(source)
        views += steps
    linear = index.producer.get(sources[0])
    if (linear is None or linear.op not in ("trimtab.Linear", "trimtab.QLinear") or linear.attrs.get("act")
            or linear.attrs.get("out_scale") is not None or len(linear.attrs.get("split") or []) != 3
            or sorted(sources) != sorted(linear.outputs) or plan.dtypes[sources[0]] not in _HALF
            or any(index.sole_consumer(s) is None for s in sources)):
        return None
    split = linear.attrs["split"]
    starts = [sum(split[:i]) for i in range(3)]
    offsets = [starts[linear.outputs.index(s)] for s in sources]
    head_dim = plan.shapes[attention.inputs[0]][-1]
    if len(set(split)) != 1 or split[0] % head_dim:
        return None
    return linear, views, rank, split[0] // head_dim, offsets


def _head_views(plan: Plan, index: _Index, name: str, rank: int, transposed_key: bool):
    """(the linear output `name` is a view of, the view steps) when `name` is that output split into
    heads ([B, S, H*D] -> Reshape [B, S, H, D] -> Transpose [0, 2, 1, 3]), or with rank 3 the output
    itself (Transpose [0, 2, 1] for a transposed key); else None."""
    step = index.producer.get(name)
    if rank == 3:
        if not transposed_key:
            return name, []
        if step is None or step.op != "Transpose" or list(step.attrs.get("perm", [])) != [0, 2, 1]:
            return None
        return (step.inputs[0], [step]) if index.sole_consumer(name) is not None else None
    if (step is None or step.op != "Transpose" or list(step.attrs.get("perm", [])) != [0, 2, 1, 3]
            or index.sole_consumer(name) is None):
        return None
    reshape = index.producer.get(step.inputs[0])
    if reshape is None or reshape.op != "Reshape" or index.sole_consumer(step.inputs[0]) is not step:
        return None
    source = reshape.inputs[0]
    b, s, h, d = plan.shapes[step.inputs[0]]
    if plan.shapes.get(source) != [b, s, h * d]:
        return None
    return source, [reshape, step]
