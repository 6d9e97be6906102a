"""13. `narrow_masks`: an attention mask computed at the scores' full size from data that varies
only along some of its axes is computed at that smaller size and expanded (a stride-0 view) after.

BERT's export (transformers' `masking_utils`) builds its padding mask as
And(all-true [1, 1, S, 1], padding [B, 1, 1, S]) -> Expand [B, 1, S, S] -> Where(., 0, min) ->
Cast: every query row of a sequence's [S, S] mask is the same row of keys, but the steps write
B * S * S values, and the attention kernels read them as [S, S] tiles. Computed at [B, 1, 1, S]
and expanded at the end, the mask is one row of keys a sequence; the int8 warp-specialized
attention kernel reads that row once per item instead of a tile by TMA (`qkv_attention_gluon`:
74 against 86 us a BERT-base layer at batch 128 on an H100).

Sound for any chain of elementwise steps (and Expands) with broadcasting: if every input equals
its narrowed version expanded, so does every output. A constant input is narrowed along the axes
where all its slices are equal; any other input keeps its shape. Only chains whose intermediate
tensors are read by no step outside the chain (and are not graph outputs) are rewritten.
"""

from __future__ import annotations

import torch

from trimtab.backends.gpu.fuse import _new_const
from trimtab.backends.gpu.plan import Plan, Step

ELEMENTWISE = {"Cast", "Where", "And", "Or", "Not", "Equal", "Add", "Sub", "Mul", "Div", "Neg", "Identity"}
MASKED = {"trimtab.Attention": 3, "trimtab.QKVAttention": 3}  # op -> index of its mask input


def narrow_masks(plan: Plan) -> int:
    """Rewrite each attention mask input as above; the number of masks narrowed."""
    masks = {step.inputs[i] for step in plan.steps for op, i in MASKED.items()
             if step.op == op and len(step.inputs) > i and step.inputs[i]}
    return sum(_narrow(plan, mask) for mask in sorted(masks))


def _narrow(plan: Plan, mask: str) -> bool:
    producer = {name: step for step in plan.steps for name in step.outputs}
    chain = _chain(plan, producer, mask)
    if not chain:
        return False
    narrow = _narrow_shapes(plan, chain)
    if narrow is None or narrow[mask] == tuple(plan.shapes[mask]):
        return False
    full = list(plan.shapes[mask])
    for step in chain:
        _narrow_step(plan, step, narrow)
    # the mask's producer writes the narrow tensor; a new Expand (a view) gives the mask's shape
    small = _fresh_name(plan, f"{mask}__narrow")
    last = producer[mask]
    last.outputs[last.outputs.index(mask)] = small
    plan.shapes[small], plan.dtypes[small] = list(narrow[mask]), plan.dtypes[mask]
    plan.shapes[mask] = full
    shape = _new_const(plan, f"{mask}__shape", torch.tensor(full, dtype=torch.int64))
    plan.steps.insert(plan.steps.index(last) + 1, Step("Expand", f"{last.name}__expand", [small, shape], [mask]))
    return True


def _chain(plan: Plan, producer: dict, mask: str) -> list[Step]:
    """The elementwise steps (and Expands) that compute `mask` from other tensors, in plan order,
    or [] where a tensor inside the chain has a reader outside it."""
    steps, frontier = {}, [mask]
    while frontier:
        name = frontier.pop()
        step = producer.get(name)
        if step is None or id(step) in steps or not (step.op in ELEMENTWISE or step.op == "Expand"):
            continue
        if len(step.outputs) != 1:
            return []
        steps[id(step)] = step
        frontier += _data_inputs(step)
    if not steps:
        return []
    inside = {step.outputs[0] for step in steps.values()} - {mask}
    members = set(steps)
    for step in plan.steps:
        if id(step) not in members and any(name in inside for name in step.inputs):
            return []
    if inside & set(plan.outputs):
        return []
    return [step for step in plan.steps if id(step) in members]


def _data_inputs(step: Step) -> list[str]:
    """The inputs that carry data (an Expand's shape does not)."""
    return [step.inputs[0]] if step.op == "Expand" else [name for name in step.inputs if name]


def _narrow_shapes(plan: Plan, chain: list[Step]) -> dict[str, tuple] | None:
    """Each chain tensor's narrow shape (same rank as its shape): an output's is the broadcast of
    its data inputs' narrow shapes (an Expand's, its input's); None if a shape is unknown or an
    Expand adds axes."""
    narrow: dict[str, tuple] = {}
    for step in chain:
        out = step.outputs[0]
        if out not in plan.shapes:
            return None
        rank = len(plan.shapes[out])
        if step.op == "Expand" and len(plan.shapes.get(step.inputs[0], ())) != rank:
            return None  # made an Identity, it would change the tensor's rank
        shapes = []
        for name in _data_inputs(step):
            if name not in narrow:
                if name not in plan.shapes:
                    return None
                narrow[name] = _constant_narrow_shape(plan.constants[name]) if name in plan.constants else tuple(
                    plan.shapes[name])
            shapes.append((1,) * (rank - len(narrow[name])) + narrow[name])
        narrow[out] = tuple(max(sizes) if min(sizes) > 0 else 0 for sizes in zip(*shapes)) if shapes else ()
    return narrow


def _constant_narrow_shape(value: torch.Tensor) -> tuple:
    """value's shape with 1 on each axis along which all its slices are equal."""
    shape = list(value.shape)
    for axis, size in enumerate(value.shape):
        if size > 1 and bool((value == value.narrow(axis, 0, 1)).all()):
            shape[axis] = 1
            value = value.narrow(axis, 0, 1)
    return tuple(shape)


def _narrow_step(plan: Plan, step: Step, narrow: dict[str, tuple]) -> None:
    """step computes its narrow output: narrowed constants, an Expand made an Identity."""
    if step.op == "Expand":
        step.op, step.inputs = "Identity", [step.inputs[0]]
    for i, name in enumerate(step.inputs):
        value = plan.constants.get(name)
        if value is not None and tuple(value.shape) != narrow[name]:
            for axis, size in enumerate(narrow[name]):
                value = value.narrow(axis, 0, size)
            step.inputs[i] = _new_const(plan, name, value.contiguous())
    out = step.outputs[0]
    plan.shapes[out] = list(narrow[out])


def _fresh_name(plan: Plan, base: str) -> str:
    name, index = base, 0
    while name in plan.shapes or name in plan.constants:
        index += 1
        name = f"{base}{index}"
    return name
