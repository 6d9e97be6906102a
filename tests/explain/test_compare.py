"""compare(): accumulated vs local error per node, the origin, the capture check, JSON and CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.build import build_int8
from trimtab.calibrate.ranges import TensorRange
from trimtab.data import Dataset
from trimtab.data.dataset import Sample
from trimtab.explain.compare import (
    CompareResult,
    ErrorStats,
    NodeRow,
    compare,
    output_gap,
    pick_origin,
)
from trimtab.load import load_model

WIDTH = 16


def matmul_chain(plant: bool) -> onnx.ModelProto:
    """x[N,16] -> mm1 -> a -> mm2 -> b -> mm3 -> c -> mm4 -> y. Planted: feature 0 of `a` is always
    0 (column 0 of w1 is zero) while row 0 of w2 is 1000, so w2's per-channel int8 scales are set by
    weights that never matter and every weight that does rounds to 0: mm2 alone is broken."""
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((WIDTH, WIDTH)) * 0.3).astype(np.float32) for _ in range(4)]
    if plant:
        weights[0][:, 0] = 0.0
        weights[1][0, :] = 1000.0
    names = ["x", "a", "b", "c", "y"]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i + 1}"], [names[i + 1]], name=f"mm{i + 1}") for i in range(4)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
        [numpy_helper.from_array(w, f"w{i + 1}") for i, w in enumerate(weights)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_block() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv+Relu -> Conv -> Add(residual) -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(1)

    def init(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wfc", "bfc"], ["y"], name="fc", transB=1),
    ]
    inits = [init("w1", (8, 3, 3, 3)), init("b1", (8,), 0.1), init("w2", (8, 8, 3, 3), 0.15),
             init("b2", (8,), 0.1), init("wfc", (5, 8)), init("bfc", (5,), 0.1)]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def minmax_ranges(model, inputs: np.ndarray) -> dict[str, TensorRange]:
    names = [value.name for value in model.proto.graph.value_info]
    with OrtCpuBackend(model.proto, optimize=False, extra_outputs=names) as backend:
        values = backend.infer({"x": inputs})
    values["x"] = inputs
    return {name: TensorRange(float(np.abs(v).max()), float(v.min()), float(v.max())) for name, v in values.items()}


def dataset(inputs: np.ndarray) -> Dataset:
    return Dataset([Sample({"x": row}, None, f"memory[{i}]") for i, row in enumerate(inputs)])


def chain_inputs(n: int = 40) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, WIDTH)).astype(np.float32)


@pytest.fixture(scope="module")
def planted():
    model = load_model(matmul_chain(plant=True))
    inputs = chain_inputs()
    return model, build_int8(model, minmax_ranges(model, inputs), "ort-cpu"), inputs


def by_node(result: CompareResult) -> dict[str, NodeRow]:
    return {row.node: row for row in result.rows}


def test_planted_node_is_the_origin_and_later_nodes_only_inherit_error(planted):
    model, artifact, inputs = planted
    result = compare(model, artifact, dataset(inputs), batch_size=8, max_samples=32)
    rows = by_node(result)
    assert list(rows) == ["mm1", "mm2", "mm3", "mm4"]
    assert result.n_samples == 32
    assert rows["mm1"].local.sqnr_db > 30 and rows["mm1"].accumulated.sqnr_db > 30
    assert rows["mm2"].local.sqnr_db < 10  # introduced here
    for name in ("mm3", "mm4"):  # inherited: high accumulated error, low local error
        assert rows[name].accumulated.sqnr_db < 10, name
        assert rows[name].local.sqnr_db > 30, name
    assert result.origin == "mm2"
    assert "below 30 dB" in result.origin_reason
    assert rows["mm2"].candidate_tensor == artifact.tensor_map["b"]
    assert result.worst(1)[0].node in {"mm2", "mm3", "mm4"}


def test_saved_artifact_without_map_finds_the_same_origin(planted, tmp_path):
    model, artifact, inputs = planted
    saved = onnx.load(str(artifact.save(tmp_path / "int8.onnx")))
    result = compare(model, saved, dataset(inputs), max_samples=16)
    assert result.origin == "mm2"
    rows = by_node(result)
    # the group output read only through Q -> DQ is carried by the DQ output, as the map says
    assert rows["mm2"].candidate_tensor == artifact.tensor_map["b"]
    assert rows["mm3"].local.sqnr_db > 30 and rows["mm3"].accumulated.sqnr_db < 10


def test_clean_chain_has_no_node_below_the_threshold():
    model = load_model(matmul_chain(plant=False))
    inputs = chain_inputs()
    artifact = build_int8(model, minmax_ranges(model, inputs), "ort-cpu")
    result = compare(model, artifact, dataset(inputs), max_samples=16)
    assert all(row.local.sqnr_db > 30 and row.accumulated.sqnr_db > 25 for row in result.rows)
    assert "no node below" in result.origin_reason


@pytest.mark.parametrize("flavour", ["ort-cpu", "tensorrt"])
def test_capture_does_not_change_a_normal_int8_model(flavour):
    model = load_model(conv_block())
    inputs = np.random.default_rng(2).standard_normal((12, 3, 8, 8)).astype(np.float32)
    artifact = build_int8(model, minmax_ranges(model, inputs), flavour)
    result = compare(model, artifact, dataset(inputs), batch_size=5)
    assert result.capture_changes_outputs is False
    assert result.capture_max_diff <= result.capture_tolerance
    assert result.n_samples == 12
    rows = by_node(result)
    assert {"conv1", "conv2", "add", "fc"} <= set(rows)
    assert all(0.99 < row.accumulated.cosine <= 1.0 for row in result.rows)
    assert rows["conv1"].local is not None and 25 < rows["conv1"].local.sqnr_db < 80
    assert result.deployed_max_diff is not None and result.deployed_max_diff < 0.05


def test_fp32_candidate_is_exact_everywhere():
    model = load_model(conv_block())
    inputs = np.random.default_rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32)
    result = compare(model, model.proto, dataset(inputs))
    assert result.rows and all(row.accumulated.sqnr_db == math.inf and row.accumulated.max_abs == 0.0
                               for row in result.rows)
    assert result.origin is None


def test_output_gap_is_relative_and_flags_changes():
    plain = {"y": np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)}
    assert output_gap(plain, {"y": plain["y"].copy()}) == 0.0
    assert output_gap(plain, {"y": plain["y"] + np.float32(0.004)}) == pytest.approx(0.001, rel=1e-3)
    assert output_gap(plain, {"y": np.full((2, 2), np.nan, np.float32)}) == math.inf
    assert output_gap(plain, {}) == math.inf


def test_pick_origin_prefers_the_first_node_below_the_threshold():
    def row(name, local):
        stats = ErrorStats(local, 1.0, 0.0, 0.0)
        return NodeRow(name, "MatMul", name, name, stats, stats)

    rows = [row("a", 45.0), row("b", 12.0), row("c", 5.0)]
    assert pick_origin(rows, 30.0)[0] == "b"
    assert pick_origin(rows, 10.0)[0] == "c"
    assert pick_origin(rows, 1.0)[0] == "c"  # none below: the largest local error
    assert pick_origin([row("a", math.inf)], 30.0)[0] is None


def test_result_round_trips_through_json_with_nan_and_inf(planted, tmp_path):
    model, artifact, inputs = planted
    result = compare(model, artifact, dataset(inputs), max_samples=8)
    nan_row = NodeRow("n", "Add", "t", "t", ErrorStats(math.nan, math.nan, math.inf, math.nan), None)
    result.rows.append(nan_row)
    path = result.save(tmp_path / "layers.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = CompareResult.load(path)
    assert loaded.origin == result.origin and loaded.n_samples == 8
    assert loaded.rows[0] == result.rows[0]
    assert math.isnan(loaded.rows[-1].accumulated.sqnr_db) and loaded.rows[-1].accumulated.max_abs == math.inf
    assert json.loads(text)["rows"][-1]["accumulated"]["max_abs"] == "inf"


def test_cli_compare_prints_the_origin_and_writes_json(planted, tmp_path):
    _, artifact, inputs = planted
    onnx.save(matmul_chain(plant=True), tmp_path / "chain.onnx")
    artifact.save(tmp_path / "int8.onnx")
    np.savez(tmp_path / "data.npz", x=inputs[:12])
    out = tmp_path / "layers.json"
    run = subprocess.run(
        [sys.executable, "-m", "trimtab.cli.main", "compare", str(tmp_path / "chain.onnx"), str(tmp_path / "int8.onnx"),
         "--data", str(tmp_path / "data.npz"), "--out", str(out), "--top", "3"],
        check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    table = lines[1:4]
    assert len(table) == 3 and {line.split()[0] for line in table} <= {"mm2", "mm3", "mm4"}
    assert any(line.startswith("origin: mm2 ") for line in lines)
    assert any(line.startswith("capture check: final outputs agree") for line in lines)
    saved = json.loads(out.read_text())
    assert saved["origin"] == "mm2" and saved["n_samples"] == 12 and saved["capture_changes_outputs"] is False


def test_fp16_saturation_is_counted_apart_not_as_infinite_error():
    from trimtab.explain.compare import _Accumulator

    reference = np.array([[-3.4e38, 1.0, 2.0], [-3.4e38, -1.0, 0.5]], np.float32)
    with np.errstate(over="ignore"):
        candidate = reference.astype(np.float16)  # -3.4e38 -> -inf, as an fp16 mask Add computes it
    accumulator = _Accumulator()
    accumulator.update(reference, candidate)
    stats = accumulator.result()
    assert stats.saturated == pytest.approx(2 / 6)
    assert math.isinf(stats.sqnr_db) and stats.max_abs == 0.0  # the rest is exact in fp16
    accumulator.update(reference, np.where(np.isinf(candidate), np.float16(0), candidate))  # not saturation
    stats = accumulator.result()
    assert stats.sqnr_db < 1 and stats.max_abs > 1e38 and stats.saturated == pytest.approx(2 / 12)


def test_cli_table_warns_when_capture_changed_the_outputs(capsys):
    from trimtab.cli.main import _print_compare

    stats = ErrorStats(20.0, 0.99, 0.1, 0.1)
    result = CompareResult("ref", "cand", [NodeRow("conv", "Conv", "c", "c", stats, stats)], "conv", "reason", 30.0,
                           True, 3.4e-4, 1e-6, 0.01, 4)
    _print_compare(result, 5)
    out = capsys.readouterr().out
    assert "warning: capturing intermediate tensors changed the final outputs" in out and "0.00034" in out
    assert "capture check: final outputs agree" not in out


def test_unrelated_candidate_is_an_error_with_a_hint():
    from trimtab.errors import InvalidModelError

    model = load_model(matmul_chain(plant=False))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["z"], name="relu")], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", WIDTH])])
    other = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidModelError, match="no tensor of the reference"):
        compare(model, other, dataset(chain_inputs(4)))
