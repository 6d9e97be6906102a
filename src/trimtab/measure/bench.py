"""Speed and memory of candidates, measured so that they can be compared on a noisy machine.

Shared machines drift up to ~3x within minutes (FACTS.md), so absolute times from separate runs
cannot be compared. `bench_interleaved` times every candidate round-robin in one process,
rotating the order each round, and reports each candidate's speed as the median of per-round
ratios to the baseline timed in the same round: drift that is slow compared with one round
cancels out of the ratio. Peak memory is measured in a fresh subprocess per candidate, because
a process's high-water mark only ever rises and sessions in one process share allocators.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trimtab.errors import InvalidDataError, InvalidModelError

log = logging.getLogger(__name__)

_MEMPROBE = Path(__file__).with_name("_memprobe.py")


@dataclass
class BenchResult:
    """One candidate's timing at one batch size.

    Latencies are per batch in milliseconds over every timed call; `throughput_per_s` =
    batch_size / median latency. `ratio_to_baseline` = median over rounds of
    (candidate time / baseline time in the same round): below 1 is faster than the baseline;
    `ratio_p10`/`ratio_p90` show how much that ratio moved between rounds.
    """

    name: str
    batch_size: int
    rounds: int
    calls: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    throughput_per_s: float
    ratio_to_baseline: float
    ratio_p10: float
    ratio_p90: float
    baseline: str
    layer_precisions: dict[str, str] = field(default_factory=dict)  # Backend.layer_precisions()

    @property
    def speedup(self) -> float:
        """How many times faster than the baseline (1 / ratio_to_baseline)."""
        return 1.0 / self.ratio_to_baseline

    @property
    def latency_ms(self) -> dict[str, float]:
        """The summary.json shape: {"p50", "p90", "p99"}."""
        return {"p50": self.latency_p50_ms, "p90": self.latency_p90_ms, "p99": self.latency_p99_ms}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchResult":
        optional = {"layer_precisions"}  # absent from timings saved by older versions
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data or key not in optional})


def bench_interleaved(
    backends: dict[str, Any],
    feeds: dict[str, np.ndarray],
    *,
    baseline: str = "fp32",
    warmup: int = 3,
    rounds: int = 10,
    min_seconds: float = 2.0,
    calls_per_round: int = 3,
    settle_seconds: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
    max_seconds: float | None = None,
) -> dict[str, BenchResult]:
    """Time every backend on the same `feeds`, interleaved; return a BenchResult per name.

    Runs at least `rounds` rounds and keeps going until `min_seconds` have passed; with
    `max_seconds` (a time limit), stops once they have passed and 3 rounds are done. In round r
    the order is rotated by r (no candidate always goes first, after another's cache traffic);
    each candidate makes `calls_per_round` timed `timed_infer` calls, the round's time being
    their median. `progress(rounds_done, rounds)` after each round.

    Before each candidate's turn the loop pauses `settle_seconds` and makes one untimed call:
    backends keep their runtime's default thread-pool spinning (as deployed), and the pause lets
    the previous candidate's spinning threads go idle so they do not steal cores from the one
    being timed (EfficientNet-Lite0, 5 candidates, 2 cores: int8/fp32 1.92-1.99x with spinning
    off, 2.04x spinning without the pause, 2.10-2.15x with it; one session per process: 2.1x).
    """
    _check_bench_args(backends, feeds, baseline, rounds, calls_per_round)
    names = list(backends)
    for name in names:  # warm-up: first calls pay for allocation, thread-pool start, lazy init
        for _ in range(warmup):
            backends[name].timed_infer(feeds)
    times: dict[str, list[list[float]]] = {name: [] for name in names}
    start, done = time.perf_counter(), 0
    while done < rounds or time.perf_counter() - start < min_seconds:
        if max_seconds is not None and done >= 3 and time.perf_counter() - start >= max_seconds:
            break  # a time limit: 3 rounds still give a median and a spread
        order = names[done % len(names) :] + names[: done % len(names)]
        for name in order:
            if settle_seconds > 0:
                time.sleep(settle_seconds)
            backends[name].timed_infer(feeds)  # untimed: wakes this candidate's threads and caches
            times[name].append([backends[name].timed_infer(feeds)[1] for _ in range(calls_per_round)])
        done += 1
        if progress:
            progress(done, rounds)
    batch_size = len(next(iter(feeds.values())))
    log.debug("benchmarked %s at batch %d: %d rounds", names, batch_size, done)
    return {name: _summarise(name, times[name], times[baseline], baseline, batch_size) for name in names}


def _check_bench_args(backends, feeds, baseline, rounds, calls_per_round) -> None:
    if baseline not in backends:
        raise ValueError(f"baseline '{baseline}' is not among the candidates {sorted(backends)}")
    if rounds < 1 or calls_per_round < 1:
        raise ValueError(f"rounds and calls_per_round must be >= 1, got {rounds} and {calls_per_round}")
    if not feeds:
        raise InvalidDataError("no inputs to benchmark with", hint="pass one batch of model inputs")


def _summarise(name, own: list[list[float]], base: list[list[float]], baseline: str, batch_size: int):
    """Percentiles over every call; speed ratio from per-round medians against the same round."""
    calls = np.concatenate([np.asarray(r) for r in own]) * 1e3
    per_round = np.array([np.median(r) for r in own]) / np.array([np.median(r) for r in base])
    p50, p90, p99 = np.percentile(calls, [50, 90, 99])
    r10, r50, r90 = np.percentile(per_round, [10, 50, 90])
    return BenchResult(
        name=name,
        batch_size=batch_size,
        rounds=len(own),
        calls=len(calls),
        latency_p50_ms=float(p50),
        latency_p90_ms=float(p90),
        latency_p99_ms=float(p99),
        throughput_per_s=float(batch_size / (p50 / 1e3)),
        ratio_to_baseline=float(r50),
        ratio_p10=float(r10),
        ratio_p90=float(r90),
        baseline=baseline,
    )


def bench_batch_sweep(
    backends: dict[str, Any],
    feeds: dict[str, np.ndarray],
    batch_sizes: list[int],
    **options,
) -> dict[int, dict[str, BenchResult]]:
    """`bench_interleaved` at each batch size; the feeds are cut or tiled along axis 0 to fit.

    Tiling repeats samples, which is fine for timing (kernels do not look at values).
    A model with a fixed batch axis cannot be swept: its backend raises InvalidDataError.
    `options` go to `bench_interleaved` (baseline, warmup, rounds, min_seconds, ...).
    """
    results = {}
    for size in batch_sizes:
        if size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {size}")
        results[size] = bench_interleaved(backends, resize_batch(feeds, size), **options)
    return results


def resize_batch(feeds: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Cut or cyclically repeat every input along axis 0 to `batch_size` rows."""
    return {name: np.take(array, np.arange(batch_size) % len(array), axis=0) for name, array in feeds.items()}


# memory --------------------------------------------------------------------------------------
def peak_memory_bytes(
    artifact: str | Path,
    feeds: dict[str, np.ndarray],
    *,
    threads: int | None = None,
    timeout_s: float = 600.0,
) -> int:
    """Peak resident memory (bytes) that loading `artifact` in ONNX Runtime and running one batch adds.

    A fresh Python process imports numpy + onnxruntime and loads `feeds`, reads its resident set
    (VmRSS), then creates a CPU session from the file and runs once, and reads its high-water mark
    (VmHWM; ru_maxrss where /proc is missing). The result is the difference: weights as ORT holds
    them, the graph-optimisation transient, arena and activations for this batch, plus ORT's fixed
    per-session cost (thread pool, allocators: ~10 MB on the test machine, the same for every
    candidate). It excludes the interpreter and libraries, so candidates compare fairly; it is an
    RSS figure, so shared pages count and reserved-but-untouched allocations do not.
    """
    artifact = Path(artifact)
    if not artifact.is_file():
        raise InvalidModelError(f"no artifact at {artifact}", hint="save the candidate (Artifact.save) first")
    with tempfile.TemporaryDirectory(prefix="trimtab-mem-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **feeds)
        command = [sys.executable, str(_MEMPROBE), str(artifact), str(feeds_path), str(threads or 0)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise InvalidModelError(
            f"measuring the memory of {artifact.name} failed in a subprocess: {done.stderr.strip()[-800:]}",
            hint="check that the artifact loads in ONNX Runtime (trimtab bench runs it the same way)",
        )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    log.debug("peak memory of %s: %s", artifact.name, report)
    return max(0, int(report["peak_bytes"]) - int(report["baseline_bytes"]))


def peak_memory_by_candidate(
    artifacts: dict[str, str | Path],
    feeds: dict[str, np.ndarray],
    *,
    threads: int | None = None,
) -> dict[str, int]:
    """`peak_memory_bytes` for each named artifact, one fresh process each."""
    return {name: peak_memory_bytes(path, feeds, threads=threads) for name, path in artifacts.items()}
