"""bench: structure of interleaved results, order of a light vs a heavy model, memory in a subprocess.

No tight timing asserts (timing belongs in bench/): the heavy model does ~1000x the work of the
light one, so "heavy is slower" survives any drift a shared machine shows.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from tests.measure.measure_models import matmul_chain

from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.errors import InvalidModelError
from trimtab.measure import BenchResult, bench_batch_sweep, bench_interleaved, peak_memory_bytes, resize_batch

LIGHT = dict(in_dim=32, hidden=16, layers=1, out_dim=8)
HEAVY = dict(in_dim=32, hidden=512, layers=12, out_dim=8)  # 12 x 512^2 multiply-adds per sample


@pytest.fixture
def feeds():
    return {"x": np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)}


@pytest.fixture
def backends():
    pair = {
        "fp32": OrtCpuBackend(matmul_chain(**LIGHT), threads=1).prepare(),
        "heavy": OrtCpuBackend(matmul_chain(**HEAVY), threads=1).prepare(),
    }
    yield pair
    for backend in pair.values():
        backend.close()


def test_interleaved_orders_light_before_heavy(backends, feeds):
    progress = []
    results = bench_interleaved(
        backends, feeds, warmup=1, rounds=4, min_seconds=0.0, progress=lambda done, _: progress.append(done)
    )
    assert set(results) == {"fp32", "heavy"}
    base, heavy = results["fp32"], results["heavy"]
    assert base.ratio_to_baseline == 1.0 and base.ratio_p10 == base.ratio_p90 == 1.0
    assert heavy.ratio_to_baseline > 2.0 and heavy.speedup < 0.5
    assert heavy.ratio_p10 <= heavy.ratio_to_baseline <= heavy.ratio_p90
    assert heavy.latency_p50_ms > base.latency_p50_ms and heavy.throughput_per_s < base.throughput_per_s
    for result in results.values():
        assert result.batch_size == 8 and result.rounds == 4 and result.calls == 12
        assert 0 < result.latency_p50_ms <= result.latency_p90_ms <= result.latency_p99_ms
        assert result.throughput_per_s == pytest.approx(8 / (result.latency_p50_ms / 1e3))
    assert progress == [1, 2, 3, 4]


def test_bench_result_json_roundtrip(backends, feeds):
    result = bench_interleaved(backends, feeds, warmup=0, rounds=2, min_seconds=0.0)["heavy"]
    again = BenchResult.from_dict(json.loads(json.dumps(result.to_dict(), allow_nan=False)))
    assert again == result and set(again.latency_ms) == {"p50", "p90", "p99"}


def test_min_seconds_extends_rounds(backends, feeds):
    results = bench_interleaved({"fp32": backends["fp32"]}, feeds, warmup=0, rounds=1, min_seconds=0.2)
    assert results["fp32"].rounds > 1


def test_unknown_baseline_is_rejected(backends, feeds):
    with pytest.raises(ValueError, match="baseline 'int8'"):
        bench_interleaved(backends, feeds, baseline="int8")


def test_batch_sweep_resizes_feeds(backends, feeds):
    sweep = bench_batch_sweep(backends, feeds, [1, 3, 16], warmup=0, rounds=1, min_seconds=0.0)
    assert sorted(sweep) == [1, 3, 16]
    assert {r.batch_size for r in sweep[16].values()} == {16}
    np.testing.assert_array_equal(resize_batch(feeds, 10)["x"][8:], feeds["x"][:2])


def test_peak_memory_counts_the_weights(tmp_path, feeds):
    light, heavy = tmp_path / "light.onnx", tmp_path / "heavy.onnx"
    onnx.save(matmul_chain(**LIGHT), light)
    onnx.save(matmul_chain(**HEAVY), heavy)  # ~12 MB of float32 weights
    light_bytes = peak_memory_bytes(light, feeds, threads=1)
    heavy_bytes = peak_memory_bytes(heavy, feeds, threads=1)
    assert light_bytes > 0
    assert heavy_bytes > 8e6 and heavy_bytes > light_bytes


def test_peak_memory_of_a_broken_artifact_is_a_model_error(tmp_path, feeds):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(InvalidModelError, match="broken.onnx"):
        peak_memory_bytes(broken, feeds)


def test_max_seconds_cuts_the_rounds_but_keeps_three(backends, feeds):
    results = bench_interleaved(backends, feeds, rounds=1000, warmup=1, settle_seconds=0.0, max_seconds=0.0)
    assert all(r.rounds == 3 for r in results.values())
