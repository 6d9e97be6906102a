"""Errors of the GPU engine, under trimtab's tree:

    TrimtabError
     +-- InvalidModelError
          +-- UnsupportedOpError    an ONNX node the engine cannot run (raised at build time)
"""

from __future__ import annotations

from trimtab.errors import InvalidModelError


class UnsupportedOpError(InvalidModelError):
    """The engine cannot run `op_type` (node `node_name`) in the form the model uses."""

    def __init__(self, op_type: str, node_name: str, why: str = "is not supported by the gpu engine") -> None:
        super().__init__(
            f"{op_type} node '{node_name}': {why}",
            hint="run this model on another target (--target ort-cpu), or open an issue with the op and "
            "the model so the gpu engine can learn it",
        )
        self.op_type = op_type
        self.node_name = node_name
