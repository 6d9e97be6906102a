"""The CLI turns every user error into one message and a hint on stderr, exit code 2, no traceback."""

import subprocess
import sys

import numpy as np
import onnx
import pytest

from tests.conftest import conv_bn_relu_model


def _trimtab(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "trimtab.cli.main", *map(str, args)], capture_output=True, text=True, cwd=cwd,
        timeout=300,
    )


def _assert_clean_error(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert ("\n" + result.stderr).count("\nerror: ") == 1
    assert "hint: " in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_bn_relu_model(), path)
    return path


def _npz(path, shape):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal(shape).astype(np.float32))
    return path


def test_truncated_model(tmp_path):
    path = tmp_path / "cut.onnx"
    data = conv_bn_relu_model().SerializeToString()
    path.write_bytes(data[: len(data) // 3])
    data_file = _npz(tmp_path / "d.npz", (4, 3, 8, 8))
    _assert_clean_error(_trimtab("tune", path, "--calib", data_file, "--val", data_file, "--out", tmp_path / "r"), "cut.onnx")


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("these are my notes, not a model\n" * 20)
    _assert_clean_error(_trimtab("build", path, "--precision", "fp16", "--out", tmp_path / "o.onnx"), "notes.onnx")


def test_empty_data_folder(tmp_path, model_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_clean_error(
        _trimtab("tune", model_file, "--calib", empty, "--val", empty, "--out", tmp_path / "r"), "empty"
    )


def test_folder_of_undecodable_images(tmp_path, model_file):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        (folder / f"img{i}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    _assert_clean_error(_trimtab("tune", model_file, "--calib", folder, "--val", folder, "--out", tmp_path / "r"), "bad")


def test_wrong_input_shape(tmp_path, model_file):
    data_file = _npz(tmp_path / "wrong.npz", (4, 1, 8, 8))  # one channel, the model wants three
    _assert_clean_error(
        _trimtab("tune", model_file, "--calib", data_file, "--val", data_file, "--out", tmp_path / "r"), "shape"
    )


def test_nan_activations_during_calibration(tmp_path, model_file):
    values = np.full((4, 3, 8, 8), np.nan, np.float32)
    np.savez(tmp_path / "nan.npz", x=values)
    result = _trimtab("calibrate", model_file, "--calib", tmp_path / "nan.npz", "--out", tmp_path / "c")
    _assert_clean_error(result, "NaN")


def test_unknown_example():
    _assert_clean_error(_trimtab("tune", "example:nope"), "nope")


def test_unknown_backend(tmp_path, model_file):
    data_file = _npz(tmp_path / "d.npz", (4, 3, 8, 8))
    result = _trimtab("tune", model_file, "--calib", data_file, "--val", data_file, "--target", "tensorrt",
                      "--out", tmp_path / "r")
    _assert_clean_error(result, "tensorrt")
