"""Read an ONNX file safely and prepare it: check, upgrade the opset, fold, infer shapes, hash."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from trimtab.errors import InvalidModelError
from trimtab.load.model import Model

log = logging.getLogger(__name__)

# Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) needs opset 13.
MIN_OPSET = 13


def read_onnx(path: str | Path):
    """Parse an ONNX file, refusing external data that points outside the model's folder."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"model file '{path}' does not exist", hint="check the path")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidModelError(
            f"'{path}' is not a readable ONNX model ({type(exc).__name__}: {exc})",
            hint="the file may be truncated or not an ONNX file; re-export or re-download it",
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise InvalidModelError(
            f"'{path}' parsed as an empty ONNX model (no nodes, no outputs): it is probably not an ONNX file",
            hint="pass the .onnx file exported from your framework",
        )
    if _uses_external_data(proto):
        _check_external_locations(proto, path.parent)
        onnx.load_external_data_for_model(proto, str(path.parent))
    return proto


def _uses_external_data(proto) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(proto))


def _all_tensors(proto):
    yield from proto.graph.initializer
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def _check_external_locations(proto, folder: Path) -> None:
    """External data must stay inside the model's folder: no absolute paths, no '..', no symlinks out."""
    root = folder.resolve()
    for tensor in _all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key != "location":
                continue
            location = entry.value
            target = (folder / location).resolve()
            if os.path.isabs(location) or not target.is_relative_to(root):
                raise InvalidModelError(
                    f"tensor '{tensor.name}' keeps its data at '{location}', outside the model folder '{folder}'",
                    hint="external data files must sit in the model's folder; re-save the model with "
                    "onnx.save(..., save_as_external_data=True, location='<file name>')",
                )


def prepare(proto, *, name: str, path: Path | None = None) -> Model:
    """Check, upgrade to opset >= 13, fold constants and BatchNormalization, infer shapes, hash."""
    _check(proto, name)
    proto = _upgrade_opset(proto, name)
    proto = _fold(proto, name)
    proto = _infer_shapes(proto)
    digest = hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()
    initialisers = {init.name for init in proto.graph.initializer}
    return Model(
        proto=proto,
        sha256=digest,
        name=name,
        path=path,
        input_names=tuple(i.name for i in proto.graph.input if i.name not in initialisers),
        output_names=tuple(o.name for o in proto.graph.output),
    )


def _check(proto, name: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=False)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(
            f"model '{name}' fails the ONNX checker: {first_line}",
            hint="re-export the model; `python -m onnx.checker MODEL` shows the full report",
        ) from exc


def default_opset(proto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _upgrade_opset(proto, name: str):
    import onnx.version_converter

    opset = default_opset(proto)
    if opset >= MIN_OPSET:
        return proto
    log.info("upgrading '%s' from opset %d to %d (per-channel Q/DQ needs 13)", name, opset, MIN_OPSET)
    try:
        return onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors and C++ errors
        raise InvalidModelError(
            f"model '{name}' is at opset {opset} and could not be upgraded to {MIN_OPSET}: {exc}",
            hint=f"re-export the model at opset {MIN_OPSET} or newer",
        ) from exc


def _fold(proto, name: str):
    """Constant folding and Conv+BatchNormalization fusion through ONNX Runtime's *basic* level,
    which only applies ONNX-standard, semantics-preserving rewrites (no contrib ops)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    if proto.ByteSize() > 1_900_000_000:
        log.warning("model '%s' is close to 2 GB; skipping constant folding", name)
        return proto
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "folded.onnx")
        try:
            ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise InvalidModelError(
                f"model '{name}' cannot be loaded by ONNX Runtime: {str(exc).strip().splitlines()[0]}",
                hint="check that every op is a standard ONNX op at the model's opset",
            ) from exc
        folded = onnx.load(options.optimized_model_filepath)
    # ORT declares every domain it knows; keep only those the graph uses, so checkers and other
    # runtimes see the model as it was.
    used = {node.domain for node in folded.graph.node} | {""}
    kept = [entry for entry in folded.opset_import if entry.domain in used or entry.domain == "ai.onnx"]
    del folded.opset_import[:]
    folded.opset_import.extend(kept)
    folded.producer_name = proto.producer_name or "trimtab"
    return folded


def _infer_shapes(proto):
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference is an aid, not a requirement
        log.warning("shape inference failed (%s); continuing without inferred shapes", exc)
        return proto
