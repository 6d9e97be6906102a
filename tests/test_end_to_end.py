"""End to end on the real examples (slow: run in CI, skip with -m 'not slow')."""

import json
import subprocess
import sys

import pytest

SUMMARY_KEYS = {"trimtab_version", "model", "target", "task", "metric", "budget", "baseline", "candidates",
                "chosen", "reason"}
CANDIDATE_KEYS = {"name", "precision", "metric_value", "metric_drop", "metric_ci95", "throughput_per_s",
                  "latency_ms", "batch_size", "model_bytes", "peak_mem_bytes", "artifact", "within_budget"}


@pytest.mark.slow
def test_demo_writes_the_run_folder_and_chooses_int8(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "trimtab.cli.main", "demo", "--out", str(out), "--bench-seconds", "8", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert {"path", "sha256"} <= set(summary["model"]) and {"backend", "device"} <= set(summary["target"])
    names = [c["name"] for c in summary["candidates"]]
    assert names[:2] == ["fp32", "fp16"] and sum(n.startswith("int8-") for n in names) == 4
    for candidate in summary["candidates"]:
        assert CANDIDATE_KEYS <= set(candidate)
        assert {"p50", "p90", "p99"} <= set(candidate["latency_ms"])
        assert (out / candidate["artifact"]).is_file()
    chosen = next(c for c in summary["candidates"] if c["name"] == summary["chosen"])
    assert chosen["precision"] == "int8", summary["reason"]
    assert chosen["within_budget"] and chosen["throughput_per_s"] > summary["candidates"][0]["throughput_per_s"]
    for name in ("report.html", "plan.json", "log.txt", "models/chosen.onnx", "calibration/trt.cache",
                 "lint.json", "layers.json", "calibration/diagnostics.json", "calibration/coverage.json"):
        assert (out / name).is_file(), name
    assert (out / "calibration/trt.cache").read_text().startswith("TRT-")
    assert json.loads((out / "plan.json").read_text())["default"] == "int8"
    assert summary["chosen"] in result.stdout
    assert "explain" in summary["timings_s"]
    assert not any("explain pass failed" in note for note in summary["notes"]), summary["notes"]


@pytest.mark.slow
def test_fashion_cnn_int8_within_half_a_point_on_10k(tmp_path):
    import trimtab

    config = trimtab.TuneConfig(methods=("entropy", "mse"), include_fp16=False, bench_seconds=4, measure_memory=False)
    summary = trimtab.tune("example:fashion-cnn", config=config, out=tmp_path / "fashion")
    baseline = summary.candidate("fp32")
    assert baseline.metric_value > 0.85
    for name in ("int8-entropy-ort-cpu", "int8-mse-ort-cpu"):
        candidate = summary.candidate(name)
        lo, hi = candidate.metric_ci95
        assert lo <= candidate.metric_drop <= hi
        assert abs(candidate.metric_drop) <= 0.5, (name, candidate.metric_drop)
    assert summary.chosen.startswith("int8")
