"""The lowered program: what `lower` produces, the engine cache stores, and `engine` compiles.

A `Plan` is device-neutral data: an ordered list of `Step`s (an ONNX op or a fused `trimtab.*`
op, its attributes as JSON values, input and output tensor names), the constants they read
(torch tensors, keyed by name), and the static shape and dtype of every tensor of one batch
profile. It is saved as `plan.json` + `constants.pt` (a dict of tensors, loaded with
`weights_only=True`): no pickled Python objects.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trimtab._io import atomic_write_bytes, atomic_write_json

FORMAT = 7  # 2: 8-bit linear layers (trimtab.QLinear); 3: LayerNorms writing 8-bit copies; 4: fp16 FakeQuant; 5: QuantAdd
# 6: QKVAttention; 7: narrowed attention masks
_TENSOR_ATTR = "__tensor__"


@dataclass(eq=False)  # steps compare by identity: fusion passes remove them from lists
class Step:
    op: str  # ONNX op type, or "trimtab.Conv" / "trimtab.Linear" / "trimtab.FakeQuant" (fused)
    name: str  # the ONNX node's name (the first node's for a fused step)
    inputs: list[str]  # "" for an input the node leaves out
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    fused: list[str] = field(default_factory=list)  # names of the ONNX nodes folded into this step


@dataclass
class Plan:
    inputs: list[str]
    outputs: list[str]
    steps: list[Step]
    constants: dict[str, torch.Tensor]
    shapes: dict[str, list[int]]  # every tensor the steps read or write (static per profile)
    dtypes: dict[str, str]  # torch dtype names, e.g. "float16"
    opset: int
    notes: dict[str, Any] = field(default_factory=dict)  # build facts: fusions, folded nodes

    def dtype(self, name: str) -> torch.dtype:
        return getattr(torch, self.dtypes[name])

    # persistence -----------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write `constants.pt` then `plan.json` (the plan is written last: its presence marks a
        complete entry)."""
        constants = dict(self.constants)
        steps = []
        for step in self.steps:
            attrs = {}
            for key, value in step.attrs.items():
                if isinstance(value, torch.Tensor):
                    ref = f"{_TENSOR_ATTR}{len(constants)}:{step.name}:{key}"
                    constants[ref] = value
                    value = {_TENSOR_ATTR: ref}
                attrs[key] = value
            steps.append({"op": step.op, "name": step.name, "inputs": step.inputs, "outputs": step.outputs,
                          "attrs": attrs, "fused": step.fused})
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in constants.items()}, buffer)
        atomic_write_bytes(folder / "constants.pt", buffer.getvalue())
        atomic_write_json(folder / "plan.json", {
            "format": FORMAT, "inputs": self.inputs, "outputs": self.outputs, "steps": steps,
            "shapes": self.shapes, "dtypes": self.dtypes, "opset": self.opset, "notes": self.notes,
        })

    @classmethod
    def load(cls, folder: Path) -> "Plan | None":
        """The plan saved in `folder`, or None when there is none or it is from another format."""
        plan_path, constants_path = folder / "plan.json", folder / "constants.pt"
        if not plan_path.is_file() or not constants_path.is_file():
            return None
        data = json.loads(plan_path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return None
        constants = torch.load(constants_path, map_location="cpu", weights_only=True)
        steps = []
        for raw in data["steps"]:
            attrs = {k: constants.pop(v[_TENSOR_ATTR]) if isinstance(v, dict) and _TENSOR_ATTR in v else v
                     for k, v in raw["attrs"].items()}
            steps.append(Step(raw["op"], raw["name"], raw["inputs"], raw["outputs"], attrs, raw["fused"]))
        return cls(data["inputs"], data["outputs"], steps, constants, data["shapes"], data["dtypes"],
                   data["opset"], data.get("notes", {}))
