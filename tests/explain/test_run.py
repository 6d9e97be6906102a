"""The cheap explain pass tune runs: files written into the run folder, sensitivity only when int8
misses the budget."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trimtab
from trimtab.data import Dataset
from trimtab.data.dataset import Sample


def _mlp(tmp_path):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w1[0, :] *= 400.0  # one input channel dominates: int8 loses the others at minmax scales
    w2 = rng.standard_normal((32, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    samples = [Sample({"x": rng.standard_normal(16).astype(np.float32)}, source=f"s{i}") for i in range(48)]
    return path, Dataset(samples, name="mlp-data")


@pytest.mark.parametrize("budget, expect_sensitivity", [(100.0, False), (0.0, True)])
def test_tune_writes_the_explain_files(tmp_path, budget, expect_sensitivity):
    path, data = _mlp(tmp_path)
    config = trimtab.TuneConfig(task="generic", budget=budget, methods=("minmax",), include_fp16=False,
                                bench_seconds=0.2, measure_memory=False)
    summary = trimtab.tune(path, data, data, config, out=tmp_path / "run")
    root = tmp_path / "run"
    for name in ("lint.json", "layers.json", "calibration/diagnostics.json", "calibration/coverage.json"):
        assert (root / name).is_file(), name
    assert (root / "sensitivity.json").is_file() == expect_sensitivity
    assert not any("explain pass failed" in note for note in summary.notes), summary.notes
    layers = json.loads((root / "layers.json").read_text())
    assert layers["origin"]
