"""Read an ONNX file safely and prepare it: check, upgrade the opset, fold, infer shapes, hash.

A model file is untrusted input. Before anything is allocated from what it declares, `read_onnx`
refuses: a file over protobuf's 2 GB limit (weights belong in external data), subgraphs (If/Loop/
Scan bodies) nested deeper than MAX_SUBGRAPH_DEPTH, tensors whose declared size is negative or over
MAX_TENSOR_BYTES, and external data that sits outside the model's folder, is not a regular file, or
is shorter than the tensor it claims to hold. Prepared models whose inferred shapes declare a tensor
over MAX_TENSOR_BYTES (a ConstantOfShape bomb) are refused too.
"""

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
# protobuf cannot serialise or parse one message over 2 GB; bigger models keep weights outside.
PROTOBUF_LIMIT = 2**31 - 1
# If/Loop/Scan bodies nest; real models go a few levels deep, a hostile file hundreds.
MAX_SUBGRAPH_DEPTH = 32
# One tensor over 16 GiB is not a model that fits anything trimtab targets: refuse it before allocating.
MAX_TENSOR_BYTES = 1 << 34


def read_onnx(path: str | Path):
    """Parse an ONNX file, refusing external data that points outside the model's folder."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"model file '{path}' does not exist", hint="check the path")
    size = path.stat().st_size
    if size > PROTOBUF_LIMIT:
        raise InvalidModelError(
            f"'{path}' is {size:,} bytes, over protobuf's 2 GB limit for one ONNX file",
            hint="save the weights as external data: onnx.save(model, path, save_as_external_data=True, "
            "location='weights.bin')",
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, RecursionError, MemoryError) as exc:
        raise InvalidModelError(
            f"'{path}' is not a readable ONNX model ({type(exc).__name__}: {exc})",
            hint="the file may be truncated or not an ONNX file; re-export or re-download it",
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise InvalidModelError(
            f"'{path}' parsed as an empty ONNX model (no nodes, no outputs): it is probably not an ONNX file",
            hint="pass the .onnx file exported from your framework",
        )
    tensors = list(all_tensors(proto, path))
    for tensor in tensors:
        _check_declared_size(tensor, path)
    external = [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        for tensor in external:
            _check_external_data(tensor, path)
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except (OSError, ValueError, RuntimeError, TypeError) as exc:  # TypeError: a tensor name not UTF-8 (fuzz)
            raise InvalidModelError(
                f"the external data of '{path}' cannot be read ({type(exc).__name__}: {exc})",
                hint="copy the model's data files next to it, as they were saved",
            ) from exc
    return proto


def all_tensors(proto, path: Path | str = "model"):
    """Every TensorProto of the model: initializers and tensor attributes of the main graph and of
    every subgraph (If/Loop/Scan bodies), walked without recursion. Raises InvalidModelError when
    subgraphs nest deeper than MAX_SUBGRAPH_DEPTH."""
    stack = [(proto.graph, 0)]
    while stack:
        graph, depth = stack.pop()
        if depth > MAX_SUBGRAPH_DEPTH:
            raise InvalidModelError(
                f"'{path}' nests subgraphs (If/Loop/Scan bodies) more than {MAX_SUBGRAPH_DEPTH} levels deep",
                hint="this is not a model an exporter writes; re-export it from its framework",
            )
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    stack.append((attr.g, depth + 1))
                stack.extend((sub, depth + 1) for sub in attr.graphs)


def declared_bytes(tensor) -> int | None:
    """Bytes the tensor's dims and type declare; None for types without a fixed size (strings)."""
    import onnx.helper

    count = 1
    for dim in tensor.dims:
        count *= dim
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    if tensor.data_type in (onnx.TensorProto.STRING,):
        return None
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * itemsize


def _check_declared_size(tensor, path: Path) -> None:
    if any(dim < 0 for dim in tensor.dims):
        raise InvalidModelError(
            f"'{path}': tensor '{tensor.name}' declares a negative dimension {list(tensor.dims)}",
            hint="the file is corrupt or hostile; re-export the model",
        )
    size = declared_bytes(tensor)
    if size is not None and size > MAX_TENSOR_BYTES:
        raise InvalidModelError(
            f"'{path}': tensor '{tensor.name}' declares {size:,} bytes (dims {list(tensor.dims)}), over "
            f"trimtab's limit of {MAX_TENSOR_BYTES:,} bytes per tensor",
            hint="the file is corrupt or hostile; re-export the model",
        )


def _check_external_data(tensor, path: Path) -> None:
    """External data must stay inside the model's folder (no absolute paths, no '..', no symlinks
    out), be a regular file, and hold the bytes the tensor declares (checked before reading any)."""
    folder = path.parent
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    # Fuzz findings: a NUL byte made resolving the path raise a bare ValueError, and a location that
    # is not UTF-8 comes back from protobuf as bytes (TypeError joining it to the folder).
    if not isinstance(location, str) or "\0" in location:
        raise InvalidModelError(
            f"tensor {tensor.name!r} of '{path}' names its data file {location!r}: not UTF-8 text without NUL bytes",
            hint="the file is corrupt or hostile; re-export the model",
        )
    target = (folder / location).resolve()
    if not location or os.path.isabs(location) or not target.is_relative_to(folder.resolve()):
        raise InvalidModelError(
            f"tensor '{tensor.name}' of '{path}' keeps its data at '{location}', outside the model folder "
            f"'{folder}'",
            hint="external data files must sit in the model's folder; re-save the model with "
            "onnx.save(..., save_as_external_data=True, location='<file name>')",
        )
    if not target.is_file():
        raise InvalidModelError(
            f"tensor '{tensor.name}' of '{path}' keeps its data in '{location}', which is missing or not a "
            "regular file",
            hint="copy the model's data files next to it, as they were saved",
        )
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError as exc:
        raise InvalidModelError(
            f"tensor '{tensor.name}' of '{path}' has a malformed external data entry ({exc})",
            hint="the file is corrupt or hostile; re-export the model",
        ) from exc
    available = target.stat().st_size - offset
    declared = declared_bytes(tensor)
    wanted = declared if declared is not None else length
    if offset < 0 or (length is not None and length < 0) or available < (wanted or 0) or (
        declared is not None and length is not None and length != declared
    ):
        raise InvalidModelError(
            f"tensor '{tensor.name}' of '{path}' declares {declared} bytes (length {length}, offset {offset}) "
            f"but '{location}' holds {max(available, 0)} bytes from that offset",
            hint="the data file is truncated or does not belong to this model; re-save the model",
        )


def prepare(proto, *, name: str, path: Path | None = None) -> Model:
    """Check, upgrade to opset >= 13, fold constants and BatchNormalization, infer shapes, hash."""
    large = is_over_protobuf_limit(proto)
    _check(proto, name, path if large else None)
    proto = _upgrade_opset(proto, name)
    if not large:
        proto = _fold(proto, name)
        proto = _infer_shapes(proto)
    else:  # a >2 GB proto cannot be serialised: no folding; shapes are inferred on its graph alone
        _infer_shapes_large(proto)
    _check_inferred_sizes(proto, name)
    digest = model_sha256(proto)
    initialisers = {init.name for init in proto.graph.initializer}
    return Model(
        proto=proto,
        sha256=digest,
        name=name,
        path=path,
        input_names=tuple(i.name for i in proto.graph.input if i.name not in initialisers),
        output_names=tuple(o.name for o in proto.graph.output),
    )


def is_over_protobuf_limit(proto) -> bool:
    from trimtab._onnx_io import is_large

    return is_large(proto)


def model_sha256(proto) -> str:
    """sha256 of the serialised graph. Over protobuf's 2 GB limit, of the graph without its large
    initializers' data and each such tensor's data digest (trimtab._onnx_io: one tensor's bytes
    at a time, the proto untouched)."""
    from trimtab._onnx_io import large_sha256

    if not is_over_protobuf_limit(proto):
        return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()
    return large_sha256(proto, deterministic=True)


def _check_inferred_sizes(proto, name: str) -> None:
    """Refuse a graph whose static inferred shapes declare a tensor over MAX_TENSOR_BYTES (e.g. a
    ConstantOfShape of [100000, 100000, 100]) before any runtime allocates it."""
    import onnx.helper

    for value in [*proto.graph.value_info, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not value.type.HasField("tensor_type") or not all(d.HasField("dim_value") for d in dims):
            continue
        count = 1
        for dim in dims:
            count *= max(dim.dim_value, 0)
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).itemsize
        except (KeyError, ValueError, TypeError):
            continue
        if count * itemsize > MAX_TENSOR_BYTES:
            raise InvalidModelError(
                f"model '{name}': tensor '{value.name}' has shape {[d.dim_value for d in dims]} "
                f"({count * itemsize:,} bytes), over trimtab's limit of {MAX_TENSOR_BYTES:,} bytes per tensor",
                hint="the model would exhaust memory at run time; check the shapes it builds",
            )


def _check(proto, name: str, path: Path | None = None) -> None:
    import onnx

    try:
        # over 2 GB the checker must read the model from its path (external data beside it)
        onnx.checker.check_model(str(path) if path is not None else proto, full_check=False)
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


def _infer_shapes_large(proto) -> None:
    """Shape inference for a proto over 2 GB, in place: run on its skeleton (the graph without its
    large initializers' data, trimtab._onnx_io.split: their dims and types are all inference
    needs), then the inferred value_info and outputs are copied back. The int8 builder places
    Q/DQ by these types: without them it quantized 1 of a chain's 6 MatMuls."""
    from trimtab._onnx_io import split

    skeleton, _ = split(proto)
    inferred = _infer_shapes(skeleton)
    if inferred is skeleton:
        return
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(inferred.graph.value_info)
    del proto.graph.output[:]
    proto.graph.output.extend(inferred.graph.output)


def _infer_shapes(proto):
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference is an aid, not a requirement
        log.warning("shape inference failed (%s); continuing without inferred shapes", exc)
        return proto
