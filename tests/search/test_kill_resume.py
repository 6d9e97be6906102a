"""Kill test (issue 4): `tune` killed with SIGKILL at several points, then resumed into the same
run folder: the same answer, fewer evaluations than a fresh run, no corrupt file."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trimtab
from trimtab.resume import damaged_files
from tests.search._chain import write_chain

ROOT = Path(__file__).resolve().parents[2]
CONFIG = dict(task="generic", budget=0.2, methods=("minmax",), include_fp16=False, bench_seconds=0.3,
              measure_memory=False, explain=False)
SCRIPT = """
import sys
import trimtab
from tests.search._chain import write_chain
data = write_chain(sys.argv[1], width=128, samples=8000)
trimtab.tune(sys.argv[1], data, data, trimtab.TuneConfig(**{config}), out=sys.argv[2])
"""


def _start(model: Path, out: Path, config: dict = CONFIG) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-c", SCRIPT.format(config=repr(config)), str(model), str(out)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_after(process: subprocess.Popen, state: Path, evaluations: int, timeout: float = 120.0) -> bool:
    """SIGKILL the run once `evaluations` results are saved; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if len(list(state.glob("eval-*.json"))) >= evaluations:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    process.kill()
    raise AssertionError("the run neither finished nor reached the kill point in time")


def _assert_consistent(run: Path) -> None:
    """Every finished file is whole: JSON parses, ONNX loads and checks, npz opens."""
    assert damaged_files(run) == []


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_answer_with_fewer_evaluations(tmp_path):
    model = tmp_path / "chain.onnx"
    data = write_chain(model, width=128, samples=8000)
    fresh = trimtab.tune(model, data, data, trimtab.TuneConfig(**CONFIG), out=tmp_path / "fresh")
    fresh_evals = fresh.search["evaluations_total"]["run"]
    assert fresh.search["status"] == "met" and fresh.search["evaluations"] >= 2
    kills = 0
    points = sorted({1, 3, 4, fresh_evals - 1})  # before the search, as it starts, during it
    for kill_at in points:
        run = tmp_path / f"killed-{kill_at}"
        process = _start(model, run)
        assert _kill_after(process, run / "state", kill_at), process.stderr.read().decode()
        kills += 1
        assert not (run / "summary.json").exists()
        _assert_consistent(run)
        resumed = trimtab.tune(model, data, data, trimtab.TuneConfig(**CONFIG), out=run)
        _assert_consistent(run)
        assert not list(run.rglob(".*.tmp"))
        assert resumed.search["best"] == fresh.search["best"]
        best = resumed.candidate(resumed.search["best"])
        assert best.fallback_nodes == fresh.candidate(fresh.search["best"]).fallback_nodes
        assert best.metric_value == fresh.candidate(fresh.search["best"]).metric_value
        assert resumed.search["evaluations_total"]["reused"] >= kill_at
        assert resumed.search["evaluations_total"]["run"] < fresh_evals
    assert kills == len(points) >= 3


def test_a_resume_after_the_bench_keeps_its_timings_and_so_its_decision(tmp_path):
    """A run killed after its bench (here: its summary and report removed, as if the kill came during
    the explain pass) resumes with the timings it measured, from state/bench.json, so the speed race
    between near-equal candidates is not run again. The saved race is doctored to one a fresh
    timing would never give: the resume must follow it."""
    import json

    model = tmp_path / "chain.onnx"
    data = write_chain(model, width=32, samples=64)
    config = trimtab.TuneConfig(**CONFIG)  # peak memory's reuse: the slow real-kill test below
    run = tmp_path / "run"
    first = trimtab.tune(model, data, data, config, out=run)
    passing = [c.name for c in first.candidates if c.within_budget]
    other = next(name for name in passing if name != first.chosen)  # fp32 always passes; so does the search's plan
    record_path = run / "state" / "bench.json"
    record = json.loads(record_path.read_text())
    assert sorted(record["results"]) == sorted(c.name for c in first.candidates)
    doctored = record["results"][other]
    doctored["throughput_per_s"] *= 100
    for key in ("ratio_to_baseline", "ratio_p10", "ratio_p90"):
        doctored[key] /= 100
    record_path.write_text(json.dumps(record))
    (run / "summary.json").unlink()
    (run / "report.html").unlink()
    resumed = trimtab.tune(model, data, data, config, out=run)
    assert resumed.chosen == other, resumed.reason
    assert resumed.candidate(other).throughput_per_s == doctored["throughput_per_s"]
    assert any("timings are those the interrupted run measured" in note for note in resumed.notes)
    # another batch size is another race: timed afresh
    rerun = trimtab.tune(model, data, data, trimtab.TuneConfig(**{**CONFIG, "batch_size": 4}), out=run)
    assert rerun.candidate(other).throughput_per_s != doctored["throughput_per_s"]
    assert not any("timings are those" in note for note in rerun.notes)


@pytest.mark.slow
def test_a_run_killed_after_its_bench_resumes_with_its_timings(tmp_path):
    """SIGKILL as soon as state/bench.json holds the timings (the peak-memory probes still to run):
    the resume takes the timings from it, measures only the memory, and decides on them."""
    import json

    model = tmp_path / "chain.onnx"
    data = write_chain(model, width=128, samples=8000)
    config = {**CONFIG, "measure_memory": True}
    run = tmp_path / "run"
    process = _start(model, run, config)
    bench = run / "state" / "bench.json"
    deadline = time.monotonic() + 120
    while not bench.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (run / "summary.json").exists(), process.stderr.read().decode()
    _assert_consistent(run)
    timed = json.loads(bench.read_text())["results"]
    resumed = trimtab.tune(model, data, data, trimtab.TuneConfig(**config), out=run)
    _assert_consistent(run)
    assert {c.name: c.throughput_per_s for c in resumed.candidates} == {n: r["throughput_per_s"] for n, r in timed.items()}
    assert all(c.peak_mem_bytes for c in resumed.candidates)  # measured now: the kill came before
    assert sorted(json.loads(bench.read_text())["peak_mem_bytes"]) == sorted(timed)  # and saved with the timings
    assert any("timings are those the interrupted run measured" in note for note in resumed.notes)
