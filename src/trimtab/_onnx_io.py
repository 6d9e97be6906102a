"""ONNX protos over protobuf's 2 GB limit: size, hash and save them without serialising them whole.

protobuf refuses to serialise (or even size) one message over 2 GB, and with the upb runtime every
read of a tensor's `raw_data` copies it, while clearing and restoring it leaves the old bytes in the
message's arena until the message dies (a 512 MB tensor cleared and restored three times grew the
process by 1.5 GB). So nothing here mutates the caller's proto or holds more than one tensor's
bytes at a time: a *skeleton* (the model with its large main-graph initializers' data left out) is
built field by field, and the data is streamed tensor by tensor.

    is_large(proto)                    over trimtab.load.onnx_file.PROTOBUF_LIMIT?
    proto_sha256(proto)                sha256 of the serialised bytes; over the limit, of the skeleton
                                       and each tensor's data
    proto_size(proto)                  serialised size in bytes (graph + data over the limit)
    split(proto)                       (skeleton, [(tensor, skeleton tensor)]): what save writes
    write_split(skeleton, pairs, path) the skeleton as PATH, the data as PATH.<digest>.data beside it
    save_onnx(proto, path)             atomic: PATH whole, or (over the limit) the data file first
                                       then PATH pointing at it; stale data files of PATH removed
    stored_bytes(path)                 a saved model's bytes on disk, its data file included
    compact(proto)                     a fresh copy holding only what `proto` still uses
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from trimtab._io import _atomic_write, atomic_write_bytes

# Initializers of at least this many bytes go to the data file (onnx.save's default threshold).
EXTERNAL_THRESHOLD = 1024
# Offsets of tensors of 1 MiB and more are aligned to 64 KiB (onnx.save's allocation granularity),
# so a runtime may map them.
ALIGN_THRESHOLD = 1 << 20
ALIGNMENT = 1 << 16
DATA_SUFFIX = ".data"


def _limit() -> int:
    from trimtab.load import onnx_file

    return onnx_file.PROTOBUF_LIMIT  # read at call time: tests lower it to take this path on tiny models


def _big(tensor) -> bool:
    from trimtab.load.onnx_file import declared_bytes

    return tensor.HasField("raw_data") and (declared_bytes(tensor) or 0) >= EXTERNAL_THRESHOLD


def is_large(proto) -> bool:
    """Whether `proto` is over the limit. The initializers' declared sizes decide without
    serialising when they alone are over it (upb's ByteSize serialises: 7.8 s and +3 GB for a
    1.5 GB model)."""
    if initializer_bytes(proto) > _limit():
        return True
    try:
        return proto.ByteSize() > _limit()
    except Exception:  # noqa: BLE001 - upb raises EncodeError when asked to size a message over 2 GB
        return True


def initializer_bytes(proto) -> int:
    """Bytes the main graph's initializers with raw data declare (read without copying them)."""
    from trimtab.load.onnx_file import declared_bytes

    return sum(declared_bytes(t) or 0 for t in proto.graph.initializer if t.HasField("raw_data"))


def serialised(proto) -> bytes | None:
    """`proto.SerializeToString()`, or None when it is over the limit (not even tried where its
    initializers alone are)."""
    if initializer_bytes(proto) > _limit():
        return None
    try:
        data = proto.SerializeToString()
    except Exception:  # noqa: BLE001 - upb's EncodeError
        return None
    return data if len(data) <= _limit() else None


def split(proto):
    """A copy of `proto` without the raw data of its main graph's large initializers, and the
    (original tensor, skeleton tensor) pairs of those left out. The proto is not changed."""
    import onnx

    skeleton = onnx.ModelProto()
    _copy_fields(proto, skeleton, skip={"graph"})
    _copy_fields(proto.graph, skeleton.graph, skip={"initializer"})
    pairs = []
    for tensor in proto.graph.initializer:
        copy = skeleton.graph.initializer.add()
        if _big(tensor):
            _copy_fields(tensor, copy, skip={"raw_data"})
            pairs.append((tensor, copy))
        else:
            copy.CopyFrom(tensor)
    return skeleton, pairs


def _copy_fields(source, target, skip: set[str]) -> None:
    """Copy every set field of `source` into `target` but those in `skip`, without reading them
    (`ListFields` would copy a 2 GB `raw_data` just to skip it)."""
    for field in source.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        value = getattr(source, field.name)
        if _is_repeated(field):
            if len(value):
                getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            if source.HasField(field.name):
                getattr(target, field.name).CopyFrom(value)
        elif not field.has_presence or source.HasField(field.name):
            setattr(target, field.name, value)


def _is_repeated(field) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; `label` is deprecated there
    return repeated if repeated is not None else field.label == field.LABEL_REPEATED


def proto_sha256(proto) -> str:
    """sha256 of `proto.SerializeToString()` (the key of an artifact's saved evaluation); over
    the limit, of the skeleton's bytes and each left-out tensor's name and data digest."""
    data = serialised(proto)
    return hashlib.sha256(data).hexdigest() if data is not None else large_sha256(proto)


def large_sha256(proto, *, deterministic: bool = False) -> str:
    skeleton, pairs = split(proto)
    digest = hashlib.sha256(b"trimtab.large-model/2")
    for tensor, _ in pairs:
        digest.update(tensor.name.encode() + b"\0" + hashlib.sha256(tensor.raw_data).digest())
    digest.update(skeleton.SerializeToString(deterministic=deterministic))
    return digest.hexdigest()


def proto_size(proto) -> int:
    """Bytes `proto` takes serialised; over the limit, the skeleton's plus its tensors' data
    (what save_onnx writes, without the data file's alignment padding)."""
    from trimtab.load.onnx_file import declared_bytes

    if initializer_bytes(proto) <= _limit():
        try:
            size = proto.ByteSize()  # one serialisation, not is_large's and then this one
        except Exception:  # noqa: BLE001 - upb's EncodeError
            size = None
        if size is not None and size <= _limit():
            return size
    skeleton, pairs = split(proto)
    return skeleton.ByteSize() + sum(declared_bytes(tensor) for tensor, _ in pairs)


def write_split(skeleton, pairs, path: str | os.PathLike) -> Path:
    """Write the pairs' data to `PATH.<digest>.data` (atomically, its name from its content),
    point the skeleton's tensors at it, then write the skeleton to `path` atomically. A reader of
    `path` therefore never sees a data file that is not whole. Older data files of `path` are
    removed afterwards."""
    import onnx

    from trimtab.errors import InvalidModelError
    from trimtab.load.onnx_file import declared_bytes

    path = Path(path)
    digest, layout = hashlib.sha256(), []

    def fill(handle) -> None:
        offset = 0
        for tensor, _ in pairs:
            size = declared_bytes(tensor)
            if size >= ALIGN_THRESHOLD and offset % ALIGNMENT:
                pad = ALIGNMENT - offset % ALIGNMENT
                handle.write(bytes(pad))
                offset += pad
            data = tensor.raw_data  # one tensor's copy at a time
            handle.write(data)
            digest.update(data)
            layout.append((offset, len(data)))
            offset += len(data)
            del data

    staging = path.with_name(f"{path.name}.staging{DATA_SUFFIX}")
    _atomic_write(staging, fill)
    data_path = path.with_name(f"{path.name}.{digest.hexdigest()[:16]}{DATA_SUFFIX}")
    os.replace(staging, data_path)
    for (_, copy), (offset, length) in zip(pairs, layout):
        copy.data_location = onnx.TensorProto.EXTERNAL
        del copy.external_data[:]
        for key, value in (("location", data_path.name), ("offset", offset), ("length", length)):
            copy.external_data.add(key=key, value=str(value))
    try:
        graph = skeleton.SerializeToString()
    except Exception as exc:  # noqa: BLE001 - upb's EncodeError: still over 2 GB without the initializers
        raise InvalidModelError(
            f"cannot save '{path.name}': over 2 GB even with its initializers' data in a separate file",
            hint="large tensors inside Constant nodes or subgraphs are not supported; make them initializers",
        ) from exc
    written = atomic_write_bytes(path, graph)
    _remove_stale_data(path, keep=data_path.name)
    return written


def save_onnx(proto, path: str | os.PathLike) -> Path:
    """Write `proto` to `path` atomically. Over the limit, the large initializers' data goes to
    one file beside it (`<name>.<digest>.data`, written first); ONNX Runtime and `onnx.load` read
    it by the model's path."""
    path = Path(path)
    data = serialised(proto)
    if data is not None:
        written = atomic_write_bytes(path, data)
        _remove_stale_data(path, keep=None)
        return written
    skeleton, pairs = split(proto)
    return write_split(skeleton, pairs, path)


def stored_bytes(path: str | os.PathLike) -> int:
    """Bytes a saved model takes on disk: the file and the data file save_onnx wrote beside it."""
    path = Path(path)
    pattern = _data_pattern(path, staging=False)
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def _data_pattern(path: Path, staging: bool = True):
    tag = r"([0-9a-f]{16}|staging)" if staging else r"[0-9a-f]{16}"
    return re.compile(re.escape(path.name) + r"\." + tag + re.escape(DATA_SUFFIX))


def _remove_stale_data(path: Path, keep: str | None) -> None:
    """Data files this module wrote for `path` (`<name>.<16 hex>.data`, `<name>.staging.data`), but `keep`."""
    pattern = _data_pattern(path)
    for candidate in path.parent.iterdir():
        if candidate.name != keep and pattern.fullmatch(candidate.name) and candidate.is_file():
            candidate.unlink(missing_ok=True)


def compact(proto):
    """A fresh copy of `proto`. A builder that copies a model and then replaces its weights (fp16,
    int8) leaves the replaced bytes in the copy's arena until the copy dies: for a 2.2 GB model
    the fp16 artifact held 3.3 GB, the int8 one 2.75 GB. Copying what is live and dropping the
    old proto gives that memory back."""
    fresh = type(proto)()
    fresh.CopyFrom(proto)
    return fresh
