"""A built candidate: one typed ONNX model plus what the build recorded about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trimtab._io import atomic_write_bytes

if TYPE_CHECKING:
    import onnx


@dataclass
class Artifact:
    """`tensor_map` maps each fp32 tensor name to the tensor in this artifact that carries its
    (possibly low-precision) value, recorded by the pass that rewrote the graph. Tensors whose
    name is unchanged map to themselves."""

    name: str  # candidate name, e.g. "fp16", "int8-entropy"
    precision: str  # Precision value: fp32 | fp16 | int8 | mixed
    proto: "onnx.ModelProto"
    tensor_map: dict[str, str] = field(default_factory=dict)
    flavour: str | None = None  # Int8Flavour value for int8 builds
    calibration: str | None = None  # CalibrationMethod value for int8 builds
    notes: dict = field(default_factory=dict)  # build facts for the report (kept-fp32 nodes, ...)

    def save(self, path: str | Path) -> Path:
        """Write the ONNX file atomically and return its path."""
        return atomic_write_bytes(path, self.proto.SerializeToString())

    def size_bytes(self) -> int:
        return self.proto.ByteSize()
