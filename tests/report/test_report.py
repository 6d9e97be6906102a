import json

from trimtab.report import CandidateSummary, Summary, render_report


def _summary(name="int8-entropy"):
    candidate = CandidateSummary(
        name=name, precision="int8", metric_value=0.95, metric_drop=0.5, metric_ci95=[0.0, 1.2],
        throughput_per_s=200.0, latency_ms={"p50": 40.0, "p90": 42.0, "p99": 50.0}, batch_size=8,
        model_bytes=5_000_000, peak_mem_bytes=60_000_000, artifact="models/x.onnx", within_budget=True,
        speedup_vs_fp32=2.4, speedup_spread=[2.2, 2.6],
    )
    return Summary(
        trimtab_version="0.1.0", model={"path": "m.onnx", "sha256": "ab" * 32},
        target={"backend": "ort-cpu", "device": "cpu"}, task="classify", metric="top1", budget=1.0,
        baseline={"name": "fp32", "metric_value": 0.955}, candidates=[candidate], chosen=name,
        reason="because", command="trimtab demo",
    )


def test_summary_round_trips_through_json(tmp_path):
    summary = _summary()
    path = summary.save(tmp_path / "summary.json")
    data = json.loads(path.read_text())
    for key in ("trimtab_version", "model", "target", "task", "metric", "budget", "baseline", "candidates",
                "chosen", "reason"):
        assert key in data
    assert Summary.load(path) == summary


def test_report_escapes_model_derived_strings():
    html = render_report(_summary(name="<script>alert(1)</script>"))
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html and "https://" not in html
