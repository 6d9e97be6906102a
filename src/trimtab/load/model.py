"""The loaded, prepared model every later stage works on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class Model:
    """An ONNX graph that passed the checker, was shape-inferred, had constants and
    BatchNormalization folded, and sits at opset >= 13.

    `sha256` hashes the prepared graph's serialised bytes: it keys caches and names the model
    in `summary.json`.
    """

    proto: "onnx.ModelProto"
    sha256: str
    name: str
    path: Path | None = None
    # Names of the graph inputs the data must feed (initializer-backed inputs excluded).
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def input_shapes(self) -> dict[str, list[int | str | None]]:
        """Declared input shapes; symbolic dims are strings, unknown ones None."""
        shapes = {}
        initialisers = {init.name for init in self.proto.graph.initializer}
        for value in self.proto.graph.input:
            if value.name in initialisers:
                continue
            dims = []
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value"):
                    dims.append(dim.dim_value)
                elif dim.HasField("dim_param"):
                    dims.append(dim.dim_param)
                else:
                    dims.append(None)
            shapes[value.name] = dims
        return shapes

    def input_dtypes(self) -> dict[str, "object"]:
        """numpy dtype of each graph input."""
        import onnx.helper

        initialisers = {init.name for init in self.proto.graph.initializer}
        return {
            value.name: onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            for value in self.proto.graph.input
            if value.name not in initialisers
        }
