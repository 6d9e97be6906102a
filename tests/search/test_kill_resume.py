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


def _start(model: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-c", SCRIPT.format(config=repr(CONFIG)), str(model), str(out)],
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
