"""Int8 (and fp8) rewrites of a lowered `Plan` (in place), run after the float fusions:

8. `fuse_int8_linear`: a `trimtab.Linear` whose weight was folded from int8 or float8e4m3fn (it
   carries `w_q`, `w_scale`) and whose input comes from a per-tensor symmetric `trimtab.FakeQuant`
   of the same element type (through a
   float Cast or not: build_int8 + fp16 artifacts cast around their Q/DQ) becomes a
   `trimtab.QLinear`: the activation is quantized with the FakeQuant's scale and multiplied in
   int8 (`lowbit.qgemm`), scale + bias + activation in the epilogue. It reads the FakeQuant's
   input directly (or the fp16 tensor an exact upcast came from), so the FakeQuant and the Casts
   disappear when nothing else reads them. The float weight stays an input: the engine may still
   run the layer in float where that is faster for its shape (the layer's tactic).
9. `fuse_requant`: a QLinear whose output only QLinears read, all with the same input scale and
   element, writes that element itself (quantized in its epilogue) and its readers skip their
   quantize pass.
   (BERT's FFN: up-projection + GELU writes int8 for the down-projection.)
10. `fuse_residual_quant`: Add(FakeQuant(conv(x) + bias), FakeQuant(shortcut)) -> Relu -> FakeQuant
   (a ResNet block's end, Q/DQ placed the TensorRT way, half-precision elsewhere) becomes one
   `trimtab.QuantAdd`: the FakeQuants read only by the Add, the Relu and FakeQuant after it, and
   the bias of a conv without activation whose output only that FakeQuant reads, all in one pass.
12. `fuse_residual_add`: an Add of a QLinear's float output (read by nothing else) and another
   tensor of the same shape and type (a residual branch), either a plain Add or the one folded
   into a `trimtab.LayerNorm` as its residual, moves into the QLinear's epilogue
   (attrs residual "add"; the residual is inputs[3]).
13. `defer_layer_norm`: a `trimtab.LayerNorm` (no residual of its own) whose normalized output
   only such epilogues read writes the rows' statistics instead (attrs stats_only; its 8-bit copy
   as before), and each of those QLinears recomputes the norm's output from the norm's input in
   its epilogue (residual "norm"; inputs[3:7] = the norm's input, stats, scale, bias). In BERT
   every LayerNorm but the last is read that way (by the next attention output projection or FFN
   down-projection): the normalized tensor, 25 MB at BERT-base batch 128, is neither written nor
   read back.
"""

from __future__ import annotations

from trimtab.backends.gpu.fuse import _const, _Index, _new_const
from trimtab.backends.gpu.plan import Plan, Step

_HALF = ("float16", "bfloat16")


def fuse_int8_linear(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for step in list(plan.steps):
        if step.op != "trimtab.Linear" or "w_q" not in step.attrs:
            continue
        found = _quantized_input(plan, index, step.inputs[0])
        element = str(step.attrs["w_q"].dtype).removeprefix("torch.")
        if found is None or found[2] != element or step.attrs.get("act") not in (None, "relu", "gelu"):
            step.attrs.pop("w_q"), step.attrs.pop("w_scale")
            continue
        source, x_scale, _ = found
        w_scale = step.attrs.pop("w_scale")
        step.op = "trimtab.QLinear"
        step.inputs = [source, step.inputs[1], step.inputs[2]]
        step.attrs.update(element=element, x_scale=x_scale, col_scale=(x_scale * w_scale.double()).float(),
                          out_dtype=plan.dtypes[step.outputs[0]])
        index, done = _Index(plan), done + 1
    return done


_SYMMETRIC = {"int8": (-128, 127), "float8_e4m3fn": (-448, 448)}


def _quantized_input(plan: Plan, index: _Index, x: str) -> tuple[str, float, str] | None:
    """(tensor to quantize, scale, element) when `x` is a per-tensor symmetric FakeQuant's output
    (int8, or float8e4m3fn)."""
    fake = index.producer.get(x)
    if _float_cast(plan, fake):
        fake = index.producer.get(fake.inputs[0])
    spec = _symmetric_fake_quant(plan, fake)
    if spec is None:
        return None
    source = fake.inputs[0]
    upcast = index.producer.get(source)
    if (_float_cast(plan, upcast) and plan.dtypes.get(upcast.inputs[0]) in _HALF
            and plan.dtypes.get(source) == "float32"):
        source = upcast.inputs[0]  # fp16 -> fp32 is exact: quantize the fp16 tensor itself
    return source, *spec


def _symmetric_fake_quant(plan: Plan, fake: Step | None) -> tuple[float, str] | None:
    """(scale, element) of a per-tensor symmetric FakeQuant (int8 or float8e4m3fn, zero points 0,
    one scale for both halves), else None."""
    if fake is None or fake.op != "trimtab.FakeQuant" or fake.attrs.get("axis") is not None:
        return None
    element = fake.attrs.get("element", "int8")
    if _SYMMETRIC.get(element) != (fake.attrs.get("lo"), fake.attrs.get("hi")):
        return None
    q_scale, q_zero, dq_scale, dq_zero = (_const(plan, name) for name in fake.inputs[1:5])
    if any(t is None or t.numel() != 1 for t in (q_scale, q_zero, dq_scale, dq_zero)):
        return None
    if float(q_zero.float()) != 0 or float(dq_zero.float()) != 0 or float(q_scale) != float(dq_scale):
        return None
    return float(q_scale), element


def _float_cast(plan: Plan, step: Step | None) -> bool:
    return (step is not None and step.op == "Cast"
            and plan.dtypes.get(step.inputs[0], "").startswith(("float", "bfloat"))
            and plan.dtypes.get(step.outputs[0], "").startswith(("float", "bfloat")))


def fuse_requant(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for step in plan.steps:
        if step.op != "trimtab.QLinear" or step.attrs.get("split") or step.outputs[0] in index.protected:
            continue
        y = step.outputs[0]
        readers = index.consumers.get(y, [])
        if not readers or not all(r.op == "trimtab.QLinear" and r.inputs[0] == y and y not in r.inputs[1:]
                                  for r in readers):
            continue
        scales = {(r.attrs["x_scale"], r.attrs["element"]) for r in readers}
        if len(scales) != 1:
            continue
        scale, element = scales.pop()
        if element != step.attrs["element"]:
            continue
        step.attrs["out_scale"] = scale
        step.attrs["out_dtype"] = element
        plan.dtypes[y] = element
        for reader in readers:
            reader.attrs["x_quantized"] = True
        done += 1
    return done



def fuse_norm_quant(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for norm in plan.steps:
        if norm.op != "trimtab.LayerNorm" or len(norm.outputs) != 1 or norm.attrs.get("quant_element"):
            continue
        y = norm.outputs[0]
        readers = [r for r in index.consumers.get(y, []) if r.op == "trimtab.QLinear" and r.inputs[0] == y
                   and y not in r.inputs[1:] and not r.attrs.get("x_quantized")]
        scales = {(r.attrs["x_scale"], r.attrs["element"]) for r in readers}
        if len(scales) != 1:
            continue
        scale, element = scales.pop()
        copy = f"{y}__{element}"
        plan.shapes[copy], plan.dtypes[copy] = list(plan.shapes[y]), element
        norm.outputs.append(copy)
        norm.attrs.update(quant_scale=scale, quant_element=element)
        for reader in readers:
            reader.inputs[0] = copy
            reader.attrs["x_quantized"] = True
        done += 1
    return done


_VIEWS = ("Transpose", "Reshape")


def fuse_attention_quant(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for linear in plan.steps:
        if linear.op != "trimtab.QLinear" or linear.attrs.get("x_quantized"):
            continue
        chain, name = [], linear.inputs[0]
        step = index.producer.get(name)
        while step is not None and step.op in _VIEWS and index.sole_consumer(name) is not None:
            chain.append(step)
            name = step.inputs[0]
            step = index.producer.get(name)
        if (step is None or step.op != "trimtab.Attention" or step.attrs.get("out_element")
                or index.sole_consumer(name) is None or name in linear.inputs[1:]):
            continue
        if index.sole_consumer(linear.inputs[0]) is not linear:
            continue
        element = linear.attrs["element"]
        step.attrs.update(out_scale=linear.attrs["x_scale"], out_element=element)
        for tensor in [name] + [view.outputs[0] for view in chain]:
            plan.dtypes[tensor] = element
        linear.attrs["x_quantized"] = True
        done += 1
    return done


def fuse_half_fake_quant(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for fake in [s for s in plan.steps if s.op == "trimtab.FakeQuant"]:
        up, down = index.producer.get(fake.inputs[0]), index.sole_consumer(fake.outputs[0])
        if not (_float_cast(plan, up) and _float_cast(plan, down)) or index.sole_consumer(up.outputs[0]) is not fake:
            continue
        half = plan.dtypes[up.inputs[0]]
        if half not in _HALF or plan.dtypes[down.outputs[0]] != half or plan.dtypes[fake.inputs[0]] != "float32":
            continue
        fake.inputs[0], fake.outputs = up.inputs[0], list(down.outputs)
        fake.attrs["half"] = True
        fake.fused += [up.name, down.name]
        plan.steps.remove(up)
        plan.steps.remove(down)
        index, done = _Index(plan), done + 1
    return done


def fuse_residual_quant(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for add in [s for s in plan.steps if s.op == "Add" and len(s.inputs) == 2]:
        a, b = add.inputs
        if (_const(plan, a) is not None or _const(plan, b) is not None or plan.dtypes.get(a) not in _HALF
                or plan.shapes.get(a) != plan.shapes.get(b) or plan.dtypes.get(b) != plan.dtypes[a]):
            continue
        absorbed, inputs, attrs = [], [], {}
        for name, key in ((a, "fq_a"), (b, "fq_b")):
            name, attrs[key], bias = _absorb_input(plan, index, name, add, absorbed)
            inputs.append((name, bias))
        out, attrs["relu"] = add.outputs[0], False
        relu = index.sole_consumer(out)
        if relu is not None and relu.op == "Relu":
            absorbed.append(relu)
            out, attrs["relu"] = relu.outputs[0], True
        fake = index.sole_consumer(out)
        attrs["fq_out"] = _half_fake_quant(plan, fake)
        if attrs["fq_out"]:
            absorbed.append(fake)
            out = fake.outputs[0]
        if not absorbed and not (inputs[0][1] or inputs[1][1]):
            continue  # (a conv bias taken over counts: its add pass is saved too)
        add.op, add.attrs = "trimtab.QuantAdd", attrs
        add.inputs = [inputs[0][0], inputs[1][0], inputs[0][1], inputs[1][1]]
        add.outputs = [out]
        add.fused += [step.name for step in absorbed]
        for step in absorbed:
            plan.steps.remove(step)
        index, done = _Index(plan), done + 1
    return done


def _absorb_input(plan: Plan, index: _Index, name: str, add: Step, absorbed: list) -> tuple[str, tuple | None, str]:
    """(tensor the Add reads after absorbing, its fake-quant spec or None, conv bias name or "")."""
    spec, fake = None, index.producer.get(name)
    if index.sole_consumer(name) is add and _half_fake_quant(plan, fake):
        spec = _half_fake_quant(plan, fake)
        absorbed.append(fake)
        name = fake.inputs[0]
    conv = index.producer.get(name)
    reader = fake if spec else add
    if (conv is not None and conv.op == "trimtab.Conv" and len(conv.inputs) == 3 and conv.inputs[2]
            and conv.attrs.get("act") is None and not conv.attrs.get("residual")
            and index.sole_consumer(name) is reader and len(plan.shapes[name]) >= 3):
        bias = conv.inputs.pop()
        return name, spec, bias
    return name, spec, ""


def _half_fake_quant(plan: Plan, fake: Step | None) -> tuple[float, str] | None:
    """`_symmetric_fake_quant` of a FakeQuant that reads and writes the half type."""
    if fake is None or not fake.attrs.get("half"):
        return None
    return _symmetric_fake_quant(plan, fake)


def fuse_residual_add(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for step in list(plan.steps):
        if step.op == "Add" and len(step.inputs) == 2:
            pairs = [(step.inputs[0], step.inputs[1]), (step.inputs[1], step.inputs[0])]
        elif step.op == "trimtab.LayerNorm" and len(step.inputs) == 4 and step.inputs[3]:
            pairs = [(step.inputs[0], step.inputs[3]), (step.inputs[3], step.inputs[0])]
        else:
            continue
        for out, residual in pairs:
            linear = _residual_taker(plan, index, out, residual, step)
            if linear is None:
                continue
            linear.inputs = [*(linear.inputs + ["", ""])[:3], residual]
            linear.attrs["residual"] = "add"
            if step.op == "Add":  # the linear's output is now the sum
                linear.outputs = list(step.outputs)
                linear.fused.append(step.name)
                plan.steps.remove(step)
            else:
                step.inputs = [linear.outputs[0], *step.inputs[1:3]]
            index, done = _Index(plan), done + 1
            break
    return done


def _residual_taker(plan: Plan, index: _Index, out: str, residual: str, add: Step) -> Step | None:
    """The QLinear that writes `out` when it can add `residual` in its epilogue: float output read
    only by `add`, same shape and type as the residual, and the residual computed before it."""
    linear = index.producer.get(out)
    if (linear is None or linear.op != "trimtab.QLinear" or linear.attrs.get("split") or linear.attrs.get("residual")
            or linear.attrs.get("out_scale") is not None or index.sole_consumer(out) is not add
            or _const(plan, residual) is not None or plan.shapes.get(out) != plan.shapes.get(residual)
            or plan.dtypes.get(out) != plan.dtypes.get(residual)
            or not plan.dtypes.get(out, "").startswith(("float", "bfloat"))):
        return None
    source = index.producer.get(residual)
    if source is not None and plan.steps.index(source) > plan.steps.index(linear):
        return None
    return linear


def defer_layer_norm(plan: Plan) -> int:
    index, done = _Index(plan), 0
    for norm in plan.steps:
        if (norm.op != "trimtab.LayerNorm" or norm.attrs.get("stats_only")
                or (len(norm.inputs) > 3 and norm.inputs[3])):
            continue
        y = norm.outputs[0]
        readers = index.consumers.get(y, [])
        shape = plan.shapes[y]
        scale = _const(plan, norm.inputs[1])
        bias = _const(plan, norm.inputs[2]) if len(norm.inputs) > 2 else None
        if (not readers or y in index.protected or int(norm.attrs.get("axis", -1)) % len(shape) != len(shape) - 1
                or scale is None or list(scale.shape) != shape[-1:] or (bias is not None and bias.shape != scale.shape)
                or not all(r.op == "trimtab.QLinear" and r.attrs.get("residual") == "add" and r.inputs[3] == y
                           and y not in r.inputs[:3] for r in readers)):
            continue
        stats = f"{y}__stats"
        plan.shapes[stats], plan.dtypes[stats] = [*shape[:-1], 2], "float32"
        beta = norm.inputs[2] if bias is not None else _new_const(plan, f"{norm.name}_zero_bias", scale.new_zeros(scale.shape))
        norm.outputs[0] = stats
        norm.attrs["stats_only"] = True
        for reader in readers:
            reader.inputs = [*reader.inputs[:3], norm.inputs[0], stats, norm.inputs[1], beta]
            reader.attrs["residual"] = "norm"
        done += 1
    return done
