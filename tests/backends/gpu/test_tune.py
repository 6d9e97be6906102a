"""`tune` with target gpu end to end on a tiny MatMul chain (on the CPU here: the gpu backend's
fallback; the same pipeline runs on CUDA)."""

from __future__ import annotations

import json

import pytest

import trimtab
from tests.search._chain import write_chain

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()


def test_tune_with_target_gpu_times_and_evaluates_every_candidate_on_the_gpu_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIMTAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "chain.onnx"
    data = write_chain(path, samples=32)
    config = trimtab.TuneConfig(task="generic", budget=50.0, methods=("minmax",), bench_seconds=0.3,
                                target="gpu", explain=False)
    summary = trimtab.tune(path, data, data, config, out=tmp_path / "run")

    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["target"]["backend"] == "gpu"
    assert "CUDA" in saved["target"]["device"] or "gpu engine ran on the CPU" in saved["target"]["device"]
    names = [c.name for c in summary.candidates]
    # gpu builds the symmetric (tensorrt) int8, with fp16 where it leaves the graph float
    assert names[:3] == ["fp32", "fp16", "int8-minmax-tensorrt-fp16"]
    for candidate in summary.candidates:
        assert candidate.throughput_per_s > 0 and candidate.latency_ms["p50"] > 0, candidate.name
        if CUDA:  # the engine's own GPU allocations: at least its weights
            assert candidate.peak_mem_bytes and candidate.peak_mem_bytes >= candidate.model_bytes // 8, candidate.name
        else:  # the CPU fallback has no device memory to report
            assert candidate.peak_mem_bytes is None
    assert summary.candidate("fp32").metric_drop == 0.0
    assert 0.0 < summary.candidate("int8-minmax-tensorrt-fp16").metric_drop < 50.0  # real int8 rounding
    int8 = summary.candidate("int8-minmax-tensorrt-fp16")
    assert int8.layer_precisions and set(int8.layer_precisions.values()) <= {"int8", "float16"}
    assert saved["candidates"][2]["layer_precisions"] == int8.layer_precisions
    assert summary.candidate("fp16").layer_precisions == {}
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Precision each layer ran in" in report and "int8: " in report
    assert "peak GPU mem MB" in report
    # only the bench profile of each candidate is cached on disk; evaluation engines (one per batch
    # shape) are not
    assert len(list((tmp_path / "cache" / "gpu-engines").iterdir())) == len(summary.candidates)


def test_with_target_gpu_the_search_runs_and_its_plans_keep_fp16_elsewhere(tmp_path, monkeypatch):
    """A budget full int8 misses: the mixed-precision search runs on the gpu target too, its plans
    built as int8 + fp16 (fallback nodes in fp16), costs from the engine's per-layer timings (none
    on the CPU fallback: ordered by accuracy gain alone)."""
    import onnx

    monkeypatch.setenv("TRIMTAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "chain.onnx"
    data = write_chain(path, samples=48)
    config = trimtab.TuneConfig(task="generic", budget=0.05, methods=("minmax",), bench_seconds=0.3, target="gpu",
                                explain=False, smoothing=False, include_fp16=False, max_evals=4)
    summary = trimtab.tune(path, data, data, config, out=tmp_path / "run")
    search = summary.search
    assert search["status"] != "skipped", search
    assert search["evaluations"] >= 1 and search["steps"]
    state = json.loads((tmp_path / "run" / "state" / "search-costs.json").read_text())
    costs = list(state["costs_ms"].values())
    if CUDA:  # from the engine's per-layer tactic timings (seen on an H100)
        assert costs and any(cost != 0.0 for cost in costs)
    else:  # the CPU fallback times nothing
        assert all(cost == 0.0 for cost in costs)
    for step in search["steps"]:  # fallback nodes and everything unquantized in fp16, the rest int8
        proto = onnx.load(tmp_path / "run" / step["artifact"])
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
        quantized = {n.name for n in proto.graph.node if n.op_type == "MatMul" and "_dequantized" in n.input[1]}
        assert quantized == {f"fc{i}" for i in range(6)} - set(step["fallback_nodes"])


def test_device_peak_bytes_is_none_without_cuda_and_covers_the_weights_with_it(tmp_path):
    import numpy as np

    from trimtab.backends.gpu.backend import device_peak_bytes

    path = tmp_path / "chain.onnx"
    write_chain(path, samples=4)
    import onnx

    proto = onnx.load(str(path))
    weights = sum(np.prod(t.dims) * 4 for t in proto.graph.initializer)
    x = proto.graph.input[0]
    shape = [d.dim_value or 2 for d in x.type.tensor_type.shape.dim]
    peak = device_peak_bytes(str(path), {x.name: np.ones(shape, np.float32)})
    if CUDA:
        assert peak is not None and peak >= weights
    else:
        assert peak is None


def test_tune_with_target_gpu_builds_an_fp8_candidate_when_asked(tmp_path, monkeypatch):
    """fp8 (float8e4m3fn Q/DQ, fp16 elsewhere) runs through the same pipeline as int8: evaluated,
    timed, its layers run as fp8 GEMMs (the float64 reference of the fp8 products off CUDA)."""
    monkeypatch.setenv("TRIMTAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "chain.onnx"
    data = write_chain(path, samples=32)
    config = trimtab.TuneConfig(task="generic", budget=50.0, methods=("minmax",), bench_seconds=0.3, target="gpu",
                                explain=False, smoothing=False, include_fp8=True)
    assert config.fp8
    summary = trimtab.tune(path, data, data, config, out=tmp_path / "run")
    fp8 = summary.candidate("fp8-minmax-tensorrt-fp16")
    assert fp8.precision == "fp8" and fp8.throughput_per_s > 0
    assert 0.0 < fp8.metric_drop < 50.0  # real fp8 rounding, within this generous budget
    assert fp8.layer_precisions and set(fp8.layer_precisions.values()) <= {"float8_e4m3fn", "float16"}
    assert (tmp_path / "run" / "models" / "fp8-minmax-tensorrt-fp16.onnx").is_file()


def test_fp8_candidates_are_off_by_default_without_fp8_tensor_cores_and_refused_off_the_gpu_target():
    auto = trimtab.TuneConfig(target="gpu")
    has_fp8 = CUDA and torch.cuda.get_device_capability() >= (8, 9)
    assert auto.fp8 == has_fp8
    assert not trimtab.TuneConfig(target="gpu", include_fp8=False).fp8
    assert not trimtab.TuneConfig().fp8
    with pytest.raises(ValueError, match="fp8 candidates need target gpu"):
        trimtab.TuneConfig(include_fp8=True)
