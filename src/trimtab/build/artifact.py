"""A built candidate: one typed ONNX model plus what the build recorded about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trimtab._onnx_io import proto_sha256, proto_size, save_onnx

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
        """Write the ONNX file atomically and return its path. Over protobuf's 2 GB limit the
        weights go to `<file name>.<digest>.data` beside it, written first (trimtab._onnx_io)."""
        return save_onnx(self.proto, path)

    def size_bytes(self) -> int:
        """Serialised size: the file, plus its data file over 2 GB."""
        return proto_size(self.proto)

    def sha256(self) -> str:
        """sha256 of the serialised bytes (over 2 GB: of the graph and each tensor's data): the
        key of the artifact's evaluation in a run's state."""
        return proto_sha256(self.proto)
