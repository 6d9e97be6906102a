"""A realistic run folder written with the real result classes, with a hostile node name
planted in every kind of model-derived string the report shows."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from trimtab.report import CandidateSummary, Summary

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def candidate(name, precision, drop, throughput, *, within=True, fallback=(), metric=None, ci=None):
    return CandidateSummary(
        name=name, precision=precision, metric_value=0.9 - drop / 100 if metric is None else metric,
        metric_drop=drop, metric_ci95=ci if ci is not None else [drop - 1.0, drop + 1.5],
        throughput_per_s=throughput, latency_ms={"p50": 8000 / throughput, "p90": 9000 / throughput,
                                                 "p99": 10000 / throughput},
        batch_size=8, model_bytes=5_000_000 if precision != "fp32" else 18_000_000, peak_mem_bytes=60_000_000,
        artifact=f"models/{name}.onnx", within_budget=within, speedup_vs_fp32=throughput / 110.0,
        speedup_spread=[throughput / 130.0, throughput / 95.0], calibration=None, flavour=None, p_value=0.5,
        fallback_nodes=list(fallback),
    )


def hostile_summary() -> Summary:
    candidates = [
        candidate("fp32", "fp32", 0.0, 110.0, ci=[0.0, 0.0]),
        candidate("fp16", "fp16", 0.0, 80.0),
        candidate("int8-minmax-ort-cpu", "int8", 5.0, 400.0, within=False),
        candidate("int8-entropy-ort-cpu", "int8", 5.0, 350.0, within=False),
        candidate("int8-percentile-ort-cpu", "int8", 3.0, 340.0, within=False),
        candidate(HOSTILE, "mixed", 0.5, 300.0, fallback=[HOSTILE, "/_blocks.0/Conv", "/_blocks.1/Conv", "/head"]),
    ]
    return Summary(
        trimtab_version="0.1.0", model={"path": f"/models/{HOSTILE}.onnx", "sha256": "ab" * 32},
        target={"backend": "ort-cpu", "device": "Test CPU"}, task="classify", metric="top1", budget=1.0,
        baseline={"name": "fp32", "metric_value": 0.9}, candidates=candidates, chosen=HOSTILE,
        reason=f"{HOSTILE} is the fastest candidate within the 1-point budget.",
        command=f"trimtab tune model.onnx --out 'run {HOSTILE}'", notes=[f"Layer diff: error starts at {HOSTILE}."],
        timings_s={"load": 0.5, "bench": 20.0},
        decision={"chosen": HOSTILE, "reason": "fastest within budget", "objective": "throughput", "rule": "strict",
                  "warnings": [f"weak evidence for {HOSTILE}"], "samples_needed": 1200,
                  "recommendation": {"precision": "int8", "qat": True, "why": f"QAT around {HOSTILE}"}},
        search={"status": "met", "start": "int8-percentile-ort-cpu", "evaluations": 3, "reused": 1, "seconds": 42.5,
                "best": HOSTILE,
                "steps": [
                    {"plan": "mixed-k1", "fallback_groups": 1, "fallback_nodes": ["/head"], "metric_value": 0.88,
                     "drop": 2.0, "ci95": [0.5, 3.5], "passes": False, "artifact": "models/mixed-k1.onnx",
                     "k": 1, "seconds": 9.0, "est_cost_ms": 0.8},  # search/mixed.py's Step.to_dict() spelling
                    {"plan": HOSTILE, "fallback_groups": 3, "fallback_nodes": [HOSTILE, "/head"],
                     "metric_value": 0.895, "drop": 0.5, "ci95": [-0.5, 1.0], "within_budget": True,
                     "artifact": f"models/{HOSTILE}.onnx"},
                ]},
        scenario={"name": "edge-batch1", "description": f"latency first {HOSTILE}", "objective": "latency",
                  "batch_size": 1, "budget": 1.0, "rule": "strict"},
    )


def write_sensitivity(root):
    from trimtab.explain.sensitivity import NodeGroup, RankedGroup, SensitivityResult

    rows = []
    for rank in range(1, 19):
        nodes = (HOSTILE,) if rank == 1 else (f"/_blocks.{rank}/_project_conv/Conv", f"/_blocks.{rank}/Add")
        group = NodeGroup(f"g{rank}", nodes, ("Conv", "Add")[: len(nodes)], (f"t{rank}",), prior=20.0 + rank)
        gain = 6.0 / rank if rank < 17 else (-0.3 if rank == 17 else math.inf)
        rows.append(RankedGroup(rank, group, 25.0 + gain if math.isfinite(gain) else math.inf, gain, 0.4))
    result = SensitivityResult(proxy="sqnr", flavour="ort-cpu", base_proxy=25.0, fp32_proxy=math.inf, rows=rows,
                               samples=[f"img{i}.png" for i in range(16)], dataset_size=200, seconds=12.0,
                               time_budget_s=30.0)
    result.save(root / "sensitivity.json")


def write_layers(root):
    from trimtab.explain.compare import CompareResult, ErrorStats, NodeRow

    rows = []
    for i in range(14):
        node = HOSTILE if i == 3 else f"/_blocks.{i}/Conv"
        acc = ErrorStats(sqnr_db=40.0 - 2 * i, cosine=0.999 - i / 1000, max_abs=0.1 * (i + 1), rel=0.01 * (i + 1))
        local = ErrorStats(sqnr_db=45.0 - i, cosine=0.9995, max_abs=0.05, rel=0.005)
        rows.append(NodeRow(node, "Conv", f"{node}_output_0", f"{node}_output_0", acc, local))
    result = CompareResult(reference="model", candidate=HOSTILE, rows=rows, origin=HOSTILE,
                           origin_reason="first node below 30 dB", origin_db=30.0, capture_changes_outputs=False,
                           capture_max_diff=0.0, capture_tolerance=1e-6, deployed_max_diff=0.01, n_samples=16)
    result.save(root / "layers.json")


def write_calibration(root):
    from trimtab.explain.coverage import CoverageResult, LayerCoverage
    from trimtab.explain.diagnostics import CalibrationDiagnostics, TensorDiagnostics, slug

    methods = ("minmax", "entropy", "percentile", "mse")
    tensors = [
        TensorDiagnostics(name=HOSTILE if i == 0 else f"/_blocks.{i}/Clip_output_0", count=10_000,
                          observed_amax=6.0 + i, amax={m: 6.0 + i - j for j, m in enumerate(methods)},
                          clipped={m: 0.001 * j for j, m in enumerate(methods)}, dead={m: 0.01 for m in methods},
                          spread_bits=0.5, badness=10.0 - i)
        for i in range(10)
    ]
    CalibrationDiagnostics(tensors=tensors, methods=methods, num_samples=96).save(
        root / "calibration" / "diagnostics.json")
    plots = root / "calibration" / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    (plots / f"01-{slug(HOSTILE)}.png").write_bytes(histogram_png())
    (plots / "02-blocks-1-clip-output-0.png").write_bytes(histogram_png(seed=1))
    layers = [LayerCoverage(HOSTILE, 6.0, 0.0, 9.0, 0.08, 0.09, 0.08),
              LayerCoverage("/_blocks.2/Clip_output_0", 6.0, 0.0, 6.5, 0.001, 0.001, 0.001)]
    CoverageResult(inputs=[], layers=layers, warnings=[f"layer {HOSTILE} is outside its calibrated range"],
                   calibration_samples=96, validation_samples=20).save(root / "calibration" / "coverage.json")


def histogram_png(seed: int = 0) -> bytes:
    """A 320x200 picture of a histogram: many colours, nothing uniform."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.full((200, 320, 3), 250, np.uint8)
    heights = np.clip(rng.normal(120, 40, 64), 5, 195).astype(int)
    for i, h in enumerate(heights):
        pixels[200 - h:, i * 5: i * 5 + 4] = (40 + 3 * i, 90, 200 - 2 * i)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_lint(root):
    from trimtab.explain.lint import Finding, save_findings

    findings = [
        Finding("outlier-range", "error", HOSTILE, f"{HOSTILE}_output_0", {"ratio": 42.5, "amax": 120.0},
                f"a few values of {HOSTILE} set the range", f"keep {HOSTILE} in fp32"),
        Finding("dead-quantization", "warning", "/_blocks.2/Conv", "/_blocks.2/Conv_output_0", {"dead": 0.7},
                "70% of the values round to zero", "use per-channel ranges"),
        Finding("fp16-underflow", "info", None, "W3", {"share": 0.002}, "small weights", "rescale"),
    ]
    save_findings(findings, root / "lint.json")


def write_plan(root):
    from trimtab._io import atomic_write_json
    from trimtab.build.plan import PrecisionPlan

    plan = PrecisionPlan.uniform("int8").with_rule("name", HOSTILE, "fp32").with_rule("name", "/head", "fp32")
    atomic_write_json(root / "plan.json", plan.to_dict())


def make_run_folder(root):
    """Every file the report reads, as `trimtab tune` writes them, hostile names included."""
    (root / "calibration").mkdir(parents=True, exist_ok=True)
    hostile_summary().save(root / "summary.json")
    write_sensitivity(root)
    write_layers(root)
    write_calibration(root)
    write_lint(root)
    write_plan(root)
    return root


@pytest.fixture
def run_folder(tmp_path):
    return make_run_folder(tmp_path / "run")
