"""load: read and prepare a model (ONNX file, onnx.ModelProto, torch.nn.Module or example:NAME)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trimtab.errors import InvalidModelError
from trimtab.load.model import Model
from trimtab.load.onnx_file import prepare, read_onnx

log = logging.getLogger(__name__)

EXAMPLE_PREFIX = "example:"


def load_model(source: Any, *, example_inputs: dict | None = None, name: str | None = None) -> Model:
    """Load and prepare a model.

    `source` is a path to an .onnx file, an `onnx.ModelProto`, `example:NAME`, or a
    `torch.nn.Module` (then `example_inputs` maps input names to example tensors; it is exported
    with a dynamic batch axis).
    """
    if isinstance(source, Model):
        return source
    if isinstance(source, str) and source.startswith(EXAMPLE_PREFIX):
        from trimtab.examples import get_example

        example = get_example(source[len(EXAMPLE_PREFIX) :])
        path = example.model_path()
        return prepare(read_onnx(path), name=name or example.name, path=path)
    if isinstance(source, (str, Path)):
        path = Path(source)
        return prepare(read_onnx(path), name=name or path.stem, path=path)
    if type(source).__name__ == "ModelProto":
        return prepare(source, name=name or source.graph.name or "model")
    if _is_torch_module(source):
        return _load_torch(source, example_inputs, name)
    raise InvalidModelError(
        f"cannot load a model from {type(source).__name__}",
        hint="pass an .onnx path, an onnx.ModelProto, a torch.nn.Module with example_inputs, or example:NAME",
    )


def _is_torch_module(obj: Any) -> bool:
    return any(cls.__module__.startswith("torch.nn") and cls.__name__ == "Module" for cls in type(obj).__mro__)


def _load_torch(module, example_inputs: dict | None, name: str | None) -> Model:
    import tempfile

    from trimtab.load.torch_export import export_module

    if not example_inputs:
        raise InvalidModelError(
            "a torch.nn.Module needs example inputs to be exported to ONNX",
            hint="pass example_inputs={'input': torch.randn(1, 3, 224, 224)} (names become ONNX input names)",
        )
    model_name = name or type(module).__name__
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"  # never a file name from the (user-given) model name
        export_module(module, example_inputs, path, output_names=["output"])
        return prepare(read_onnx(path), name=model_name)


__all__ = ["Model", "load_model", "prepare", "read_onnx"]
