"""TensorRT calibration cache: known encodings, bit-exact round trip, malformed files."""

from __future__ import annotations

import numpy as np
import pytest

from trimtab.calibrate.ranges import TensorRange
from trimtab.calibrate.trt_cache import read_trt_cache, read_trt_cache_header, write_trt_cache
from trimtab.errors import CalibrationError


def test_known_encoding(tmp_path):
    path = write_trt_cache({"input": TensorRange(127.0, -1.0, 127.0), "z": TensorRange(0.0, 0.0, 0.0)}, tmp_path / "c")
    assert path.read_text().splitlines() == ["TRT-100100-EntropyCalibration2", "input: 3f800000", "z: 00000000"]
    assert read_trt_cache_header(path) == (100100, "EntropyCalibration2")


def test_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    names = ["x", "/layer1/conv/Conv_output_0", "onnx::MatMul_12", "odd: name"]
    ranges = {n: TensorRange(float(a), -float(a), float(a)) for n, a in zip(names, rng.uniform(1e-4, 60, 4))}
    first = write_trt_cache(ranges, tmp_path / "a.cache")
    back = read_trt_cache(first)
    assert list(back) == names
    for name, rng_ in ranges.items():
        scale = np.float32(rng_.amax / 127)
        assert np.float32(back[name].amax / 127).view(np.uint32) == scale.view(np.uint32)
        assert (back[name].min, back[name].max) == (-back[name].amax, back[name].amax)
    second = write_trt_cache(back, tmp_path / "b.cache")
    assert second.read_bytes() == first.read_bytes()


@pytest.mark.parametrize(
    "text", ["no header\nx: 3f800000\n", "TRT-100100-EntropyCalibration2\nx 3f800000\n", "TRT-1-X\nx: 3f80\n"]
)
def test_malformed_files_raise(tmp_path, text):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    with pytest.raises(CalibrationError, match="bad.cache"):
        read_trt_cache(path)
