"""Every stage works alone from the command line, on a tiny model and a folder of images."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.conftest import conv_bn_relu_model


def _trimtab(*args):
    result = subprocess.run([sys.executable, "-m", "trimtab.cli.main", *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    onnx.save(conv_bn_relu_model(), root / "tiny.onnx")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    return root


def test_calibrate_writes_ranges_and_a_tensorrt_cache(workspace):
    stdout = _trimtab("calibrate", workspace / "tiny.onnx", "--calib", workspace / "images",
                      "--preset", "imagenet", "--out", workspace / "cal", "--no-progress")
    folder = workspace / "cal" / "calibration"
    for method in ("minmax", "entropy", "percentile", "mse"):
        ranges = json.loads((folder / f"ranges-{method}.json").read_text())
        assert {"x", "y"} <= set(ranges), method
        assert ranges["y"]["min"] >= 0.0  # a Relu output
    assert (folder / "trt.cache").read_text().splitlines()[0] == "TRT-100100-EntropyCalibration2"
    assert "trt.cache" in stdout


def test_build_from_ranges_and_from_a_tensorrt_cache(workspace):
    test_calibrate_writes_ranges_and_a_tensorrt_cache(workspace)
    folder = workspace / "cal" / "calibration"
    _trimtab("build", workspace / "tiny.onnx", "--precision", "int8", "--ranges", folder / "ranges-entropy.json",
             "--out", workspace / "int8.onnx")
    _trimtab("build", workspace / "tiny.onnx", "--precision", "int8", "--trt-cache", folder / "trt.cache",
             "--flavour", "tensorrt", "--out", workspace / "trt.onnx")
    _trimtab("build", workspace / "tiny.onnx", "--precision", "fp16", "--out", workspace / "fp16.onnx")
    _trimtab("build", workspace / "tiny.onnx", "--precision", "bf16", "--out", workspace / "bf16.onnx")
    onnx.checker.check_model(onnx.load(workspace / "bf16.onnx"), full_check=True)  # Conv at opset < 22: fp32
    _trimtab("build", workspace / "tiny.onnx", "--precision", "int8", "--trt-cache", folder / "trt.cache",
             "--flavour", "tensorrt", "--fp16-elsewhere", "--out", workspace / "trt16.onnx")
    trt16 = onnx.load(workspace / "trt16.onnx")
    assert {"QuantizeLinear", "DequantizeLinear", "Cast"} <= {n.op_type for n in trt16.graph.node}
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in trt16.graph.initializer)
    ops = {n.op_type for n in onnx.load(workspace / "int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    zero_points = [i for i in onnx.load(workspace / "trt.onnx").graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(i.data_type == onnx.TensorProto.INT8 for i in zero_points)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(workspace / "fp16.onnx").graph.initializer)


def test_eval_and_bench(workspace):
    test_build_from_ranges_and_from_a_tensorrt_cache(workspace)
    stdout = _trimtab("eval", workspace / "tiny.onnx", workspace / "int8.onnx", workspace / "fp16.onnx",
                      "--val", workspace / "images", "--preset", "imagenet", "--task", "generic")
    rows = [line.split() for line in stdout.splitlines()[1:]]
    assert len(rows) == 2
    assert all(0.9 < float(row[1]) <= 1.0 for row in rows)  # cosine to fp32
    stdout = _trimtab("bench", workspace / "tiny.onnx", workspace / "int8.onnx", "--seconds", "1",
                      "--batch-size", "1", "--batch-size", "4")
    rows = [line.split() for line in stdout.splitlines()[1:]]
    assert [(row[0], row[1]) for row in rows] == [("0:tiny", "1"), ("1:int8", "1"), ("0:tiny", "4"), ("1:int8", "4")]
    assert rows[0][-1] == "1.00x" and rows[2][-1] == "1.00x"


def test_tune_on_a_user_model(workspace):
    _trimtab("tune", workspace / "tiny.onnx", "--calib", workspace / "images", "--val", workspace / "images",
             "--task", "generic", "--bench-seconds", "1", "--out", workspace / "run", "--no-progress")
    summary = json.loads((workspace / "run" / "summary.json").read_text())
    assert summary["metric"] == "cosine" and len(summary["candidates"]) == 6
    assert summary["chosen"] in {c["name"] for c in summary["candidates"]}


def test_examples_lists_the_three_examples():
    stdout = _trimtab("examples")
    assert [line.split()[0] for line in stdout.splitlines()] == ["effnet-lite0", "fashion-cnn", "minilm"]
