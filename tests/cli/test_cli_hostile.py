"""Hostile inputs through the CLI (issue 6): one `error:` line, a `hint:` line, exit code 2, no
traceback. In-process through `trimtab.cli.main.main` (where errors become messages)."""

import sys

import numpy as np
import onnx
import pytest

from tests.conftest import conv_bn_relu_model
from tests.load.test_hostile_models import (_constant_of_shape_bomb, _huge_external, _subgraph_escape,
                                            nested_if_model_bytes)
from trimtab.cli.main import main


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["trimtab", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err and ("\n" + err).count("\nerror: ") == 1 and "\nhint: " in err
    return err


def _deep(tmp_path):
    path = tmp_path / "deep.onnx"
    path.write_bytes(nested_if_model_bytes(300))
    return path


@pytest.mark.parametrize("builder", [_deep, _huge_external, _subgraph_escape, _constant_of_shape_bomb],
                         ids=["deep-nesting", "huge-external", "subgraph-escape", "constant-of-shape-bomb"])
def test_hostile_model(tmp_path, monkeypatch, capsys, builder):
    path = builder(tmp_path)
    err = _run(monkeypatch, capsys, "build", path, "--precision", "fp16", "--out", tmp_path / "o.onnx")
    assert path.stem in err


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_bn_relu_model(), path)
    return path


def test_folder_of_bombs_and_truncated_images(tmp_path, monkeypatch, capsys, model_file):
    from tests.data.test_hostile_data import _png_with_size, _ztxt_bomb

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(_png_with_size(30000, 30000))
    (folder / "ztxt.png").write_bytes(_ztxt_bomb())
    (folder / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    err = _run(monkeypatch, capsys, "calibrate", model_file, "--calib", folder, "--out", tmp_path / "cal")
    assert "imgs" in err and "could be decoded" in err


def test_npz_with_a_lying_header(tmp_path, monkeypatch, capsys, model_file):
    from tests.data.test_hostile_data import _lying_header_npz

    data = tmp_path / "d.npz"
    data.write_bytes(_lying_header_npz())
    err = _run(monkeypatch, capsys, "calibrate", model_file, "--calib", data, "--out", tmp_path / "cal")
    assert "d.npz" in err and "declares shape" in err


def test_npz_with_pickled_objects(tmp_path, monkeypatch, capsys, model_file):
    data = tmp_path / "p.npz"
    np.savez(data, x=np.array([object()], dtype=object))
    err = _run(monkeypatch, capsys, "calibrate", model_file, "--calib", data, "--out", tmp_path / "cal")
    assert "p.npz" in err and "allow_pickle=False" in err
