"""Export a `torch.nn.Module` to an ONNX file that the rest of trimtab can load.

torch is an optional extra, so it is imported inside the function, never at module import.

The legacy TorchScript exporter (`dynamo=False`) is tried first: in torch 2.13 it still exports
EfficientNet and BERT-style encoders in about a second, with named dynamic axes and no external
data files. Where it fails (or a future torch drops it), the torch.export-based exporter
(onnxscript) is tried; it may raise the opset to 18, its lowest.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trimtab._io import atomic_write_bytes
from trimtab.errors import InvalidModelError

if TYPE_CHECKING:
    import onnx
    import torch

log = logging.getLogger(__name__)

BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"


def export_module(
    module: torch.nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    output_names: Sequence[str],
    dynamic_batch: bool = True,
    sequence_inputs: Sequence[str] = (),
    opset: int = 17,
) -> Path:
    """Export `module` (run in eval mode, without gradients) to `path`, atomically.

    `example_inputs` maps graph-input names to example tensors, in the order of `forward`'s
    positional parameters. Axis 0 of every input and output is named "batch" when
    `dynamic_batch`; axis 1 of each input in `sequence_inputs` is named "sequence" (token ids,
    masks). The file is checked with onnx.checker before it replaces `path`.
    Raises InvalidModelError when the export or the check fails.
    """
    try:
        import torch
    except ImportError as exc:  # torch is an extra
        raise InvalidModelError(
            "exporting a torch module needs torch, which is not installed",
            hint="pip install torch==2.13.0 (CPU wheel), then pip install 'trimtab[torch]'",
        ) from exc
    _check_names(example_inputs, sequence_inputs, output_names)
    axes = _dynamic_axes(example_inputs, output_names, dynamic_batch, sequence_inputs)
    was_training = module.training
    module.eval()  # dropout off, BatchNorm on running stats: the graph must be the inference one
    try:
        with torch.no_grad():
            proto = _export_to_proto(module, example_inputs, output_names, axes, opset)
    except InvalidModelError:
        raise
    except Exception as exc:  # the exporters raise many unrelated types; report them as one
        raise InvalidModelError(
            f"could not export {type(module).__name__} to ONNX (opset {opset}): {type(exc).__name__}: {exc}",
            hint="check that forward() runs on the example inputs and uses no data-dependent Python control flow",
        ) from exc
    finally:
        module.train(was_training)
    _check_exported(proto, example_inputs, output_names)
    written = atomic_write_bytes(path, proto.SerializeToString())
    log.info("exported %s to %s (%d bytes)", type(module).__name__, written, written.stat().st_size)
    return written


def _check_names(example_inputs, sequence_inputs, output_names) -> None:
    if not example_inputs:
        raise InvalidModelError("no example inputs given", hint="pass {'input': tensor} with a batch of 1")
    unknown = sorted(set(sequence_inputs) - set(example_inputs))
    if unknown:
        raise InvalidModelError(
            f"sequence_inputs {unknown} are not among the example inputs {list(example_inputs)}",
            hint="name inputs exactly as in example_inputs",
        )
    if not output_names:
        raise InvalidModelError("no output names given", hint="pass output_names=['logits'] (one per output)")


def _dynamic_axes(example_inputs, output_names, dynamic_batch, sequence_inputs) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name in [*example_inputs, *output_names]:
        named = {0: BATCH_AXIS} if dynamic_batch else {}
        if name in sequence_inputs:
            named[1] = SEQUENCE_AXIS
        if named:
            axes[name] = named
    return axes


def _export_to_proto(module, example_inputs, output_names, axes, opset) -> onnx.ModelProto:
    """Legacy exporter first; the dynamo one where it is missing or fails (one error names both)."""
    try:
        return _export_legacy(module, example_inputs, output_names, axes, opset)
    except Exception as legacy_error:  # noqa: BLE001 - any failure: try the other exporter
        log.info("TorchScript ONNX exporter failed (%s); trying the dynamo exporter", legacy_error)
        try:
            return _export_dynamo(module, example_inputs, output_names, axes, opset)
        except Exception as dynamo_error:
            raise RuntimeError(
                f"TorchScript exporter: {type(legacy_error).__name__}: {legacy_error}; "
                f"dynamo exporter: {type(dynamo_error).__name__}: {dynamo_error}"
            ) from dynamo_error


def _export_legacy(module, example_inputs, output_names, axes, opset) -> onnx.ModelProto:
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            module,
            tuple(example_inputs.values()),
            buffer,
            dynamo=False,
            input_names=list(example_inputs),
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    # The exporter warns about its own deprecation and about traced Python booleans; keep them
    # out of the user's console but available when debugging an export.
    for item in caught:
        log.debug("torch.onnx.export: %s", str(item.message).splitlines()[0])
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(module, example_inputs, output_names, axes, opset) -> onnx.ModelProto:
    import torch

    shapes = {name: {axis: torch.export.Dim.AUTO for axis in axes.get(name, {})} for name in example_inputs}
    program = torch.onnx.export(
        module,
        tuple(example_inputs.values()),
        dynamo=True,
        input_names=list(example_inputs),
        output_names=list(output_names),
        dynamic_shapes=tuple(shapes.values()),
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    return program.model_proto


def _check_exported(proto, example_inputs, output_names) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"the exported ONNX graph fails onnx.checker: {exc}") from exc
    got_inputs = [value.name for value in proto.graph.input]
    got_outputs = [value.name for value in proto.graph.output]
    if got_inputs != list(example_inputs) or got_outputs != list(output_names):
        # The TorchScript exporter silently drops inputs that forward() never reads.
        raise InvalidModelError(
            f"the exported graph has inputs {got_inputs} and outputs {got_outputs}; "
            f"expected {list(example_inputs)} and {list(output_names)}",
            hint="every example input must be used by forward(), and output_names must match its outputs",
        )
