"""`tune` with target gpu end to end on a tiny MatMul chain (on the CPU here: the gpu backend's
fallback; the same pipeline runs on CUDA)."""

from __future__ import annotations

import json

import pytest

import trimtab
from tests.search._chain import write_chain

pytest.importorskip("torch")


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
        assert candidate.peak_mem_bytes is None  # the memory probe is ONNX Runtime's; not this target's
    assert summary.candidate("fp32").metric_drop == 0.0
    assert 0.0 < summary.candidate("int8-minmax-tensorrt-fp16").metric_drop < 50.0  # real int8 rounding
    int8 = summary.candidate("int8-minmax-tensorrt-fp16")
    assert int8.layer_precisions and set(int8.layer_precisions.values()) <= {"int8", "float16"}
    assert saved["candidates"][2]["layer_precisions"] == int8.layer_precisions
    assert summary.candidate("fp16").layer_precisions == {}
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Precision each layer ran in" in report and "int8: " in report
    # only the bench profile of each candidate is cached on disk; evaluation engines (one per batch
    # shape) are not
    assert len(list((tmp_path / "cache" / "gpu-engines").iterdir())) == len(summary.candidates)
