"""TensorRT's calibration cache text format, written and read.

    TRT-100100-EntropyCalibration2
    input: 3c010a14
    /conv1/Conv_output_0: 3d5c28f6

The first line names the TensorRT version (NV_TENSORRT_VERSION = major * 10000 + minor * 100 +
patch since TensorRT 10, so 100100 is 10.1.0) and the calibrator. We write 10.1.0 by default:
the last release line where implicit calibration (and so this cache) is still read, deprecated;
TensorRT 11 removed it, so the file serves TensorRT 10 users and other tools that import it.
Each further line is `<tensor name>: <hex>`, the hex being the float32 scale s = amax / 127 as
big-endian IEEE-754 bits. Tensor names may themselves hold ': ' (torch exports `onnx::Add_12`
are fine, but be safe): the value is split off at the LAST ': '.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from trimtab._io import atomic_write_text
from trimtab.calibrate.ranges import TensorRange
from trimtab.errors import CalibrationError

DEFAULT_TRT_VERSION = 100100
CALIBRATOR = "EntropyCalibration2"
INT8_LEVELS = 127
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{8}$")


def scale_to_hex(scale: float) -> str:
    """float32 big-endian bits as 8 lowercase hex digits."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(digits: str) -> float:
    return struct.unpack(">f", bytes.fromhex(digits))[0]


def write_trt_cache(
    ranges: dict[str, TensorRange],
    path: str | Path,
    *,
    version: int = DEFAULT_TRT_VERSION,
    calibrator: str = CALIBRATOR,
) -> Path:
    """Write `ranges` as a TensorRT calibration cache (scale = amax / 127, rounded to float32)."""
    lines = [f"TRT-{int(version)}-{calibrator}"]
    for name, rng in ranges.items():
        if "\n" in name:
            raise ValueError(f"tensor name {name!r} holds a newline; TensorRT's cache cannot store it")
        lines.append(f"{name}: {scale_to_hex(rng.amax / INT8_LEVELS)}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_trt_cache(path: str | Path) -> dict[str, TensorRange]:
    """Read a TensorRT calibration cache as ranges: amax = 127 * scale, min/max = -amax/+amax.

    Raises CalibrationError naming the file and line when it is not in this format.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not _HEADER.match(lines[0].strip()):
        raise _format_error(path, 1, lines[0] if lines else "", "a header 'TRT-<version>-<calibrator>'")
    ranges: dict[str, TensorRange] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, digits = line.rpartition(": ")
        if not sep or not name or not _HEX.match(digits.strip()):
            raise _format_error(path, number, line, "'<tensor name>: <8 hex digits>'")
        scale = hex_to_scale(digits.strip())
        amax = scale * INT8_LEVELS
        if not (amax >= 0.0 and amax != float("inf")):
            raise _format_error(path, number, line, "a finite, non-negative scale")
        ranges[name] = TensorRange(amax=amax, min=-amax, max=amax)
    return ranges


def read_trt_cache_header(path: str | Path) -> tuple[int, str]:
    """(version, calibrator) from the first line, e.g. (100100, 'EntropyCalibration2')."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        first = handle.readline().strip()
    match = _HEADER.match(first)
    if not match:
        raise _format_error(path, 1, first, "a header 'TRT-<version>-<calibrator>'")
    return int(match.group(1)), match.group(2)


def _format_error(path: Path, number: int, line: str, expected: str) -> CalibrationError:
    return CalibrationError(
        f"{path}, line {number}: expected {expected}, found {line[:80]!r}",
        hint="pass a calibration cache written by TensorRT or by trimtab (calibration/trt.cache)",
    )
