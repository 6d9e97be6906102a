""".npz files: one array per model input, samples along the first axis, optional `labels`.

The shapes are read from the array headers inside the zip without loading any data, so a bad
file (arrays of different lengths, Python objects, float labels) fails when the Dataset is made.
Arrays are always loaded with allow_pickle=False: a data file must never run code.
"""

from __future__ import annotations

import lzma
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trimtab.errors import InvalidDataError

LABELS_KEY = "labels"
# What reading a corrupt zip can raise: zipfile's own errors, RuntimeError for a member flagged as
# encrypted (one bit of its header: a fuzz finding), the decompressors' errors for a member that
# claims deflate/bzip2/lzma, struct.error, and numpy's header parser (ValueError, SyntaxError).
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, SyntaxError, KeyError,
                NotImplementedError, RuntimeError, zlib.error, lzma.LZMAError, struct.error)


@dataclass(frozen=True)
class NpzIndex:
    """What an .npz holds: input array names (sorted), sample count, whether it has labels."""

    path: Path
    input_names: tuple[str, ...]
    length: int
    has_labels: bool


def read_npz_index(path: Path) -> NpzIndex:
    """Check an .npz and describe it. Raises InvalidDataError with the fix for each problem."""
    headers = _read_headers(path)
    inputs = sorted(name for name in headers if name != LABELS_KEY)
    if not inputs:
        raise InvalidDataError(
            f"{path} holds no input arrays (found: {sorted(headers) or 'nothing'})",
            hint="save one array per model input, e.g. np.savez(path, input=x, labels=y)",
        )
    for name, (shape, dtype) in headers.items():
        _check_array(path, name, shape, dtype)
    lengths = {name: shape[0] for name, (shape, _) in headers.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}: {n}" for name, n in sorted(lengths.items()))
        raise InvalidDataError(
            f"arrays in {path} have different numbers of samples ({listed})",
            hint="the first axis of every array, `labels` included, counts samples; make them equal",
        )
    length = next(iter(lengths.values()))
    if length == 0:
        raise InvalidDataError(f"{path} holds 0 samples", hint="save at least one sample")
    return NpzIndex(Path(path), tuple(inputs), length, LABELS_KEY in headers)


def _read_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} from the .npy headers in the zip, reading no array data."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as stream:
                    shape, dtype = headers[member[: -len(".npy")]] = _read_header(stream)
                _check_declared_size(path, member, shape, dtype, archive.getinfo(member).file_size)
    except InvalidDataError:
        raise
    except _READ_ERRORS as error:
        raise InvalidDataError(
            f"{path} is not a readable .npz file ({error})",
            hint="write it with numpy.savez or numpy.savez_compressed",
        ) from error
    return headers


def _check_declared_size(path: Path, member: str, shape, dtype: np.dtype, stored: int) -> None:
    """A header that declares more bytes than its zip member holds is corrupt or hostile: refuse
    it before np.load allocates the declared size."""
    declared = math.prod(int(n) for n in shape) * dtype.itemsize
    if any(int(n) < 0 for n in shape) or declared > stored:
        raise InvalidDataError(
            f"array '{member}' in {path} declares shape {tuple(shape)} ({declared:,} bytes) but holds "
            f"{stored:,} bytes",
            hint="the file is truncated or corrupt; write it again with numpy.savez",
        )


def _read_header(stream) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:  # format 3.0 (utf-8 field names) has no public header reader; load that one array
        array = np.lib.format.read_array(stream, allow_pickle=False)
        shape, dtype = array.shape, array.dtype
    return shape, dtype


def _check_array(path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise InvalidDataError(
            f"array '{name}' in {path} holds Python objects (dtype {dtype}); "
            "trimtab loads .npz files with allow_pickle=False",
            hint="save numeric arrays (pad variable-length sequences to one length)",
        )
    if len(shape) == 0:
        raise InvalidDataError(
            f"array '{name}' in {path} is a scalar; every array needs a first (sample) axis",
            hint="stack samples along axis 0, e.g. np.stack(list_of_arrays)",
        )
    if name == LABELS_KEY and (len(shape) != 1 or dtype.kind not in "iub"):
        raise InvalidDataError(
            f"'labels' in {path} has shape {shape} and dtype {dtype}; expected one integer per sample",
            hint="save class indices as a 1-D integer array, e.g. labels=y.astype(np.int64)",
        )


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of the file, loaded (allow_pickle=False)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except _READ_ERRORS as error:
        raise InvalidDataError(
            f"{path} cannot be loaded ({type(error).__name__}: {error})",
            hint="the file is corrupt or not written by numpy.savez; write it again",
        ) from error
    for name, array in arrays.items():
        _check_array(path, name, array.shape, array.dtype)
    return arrays
