"""Fault injection (issue 6): `tune` killed with SIGKILL at random moments, again and again, in one
run folder. After every kill the folder is consistent (every finished file whole, no summary
without a finished run) and a resume of a copy of it completes with the fresh run's decision: the
same chosen candidate, search plan and accuracies.

Short CI version: 5 kills. Longer: TRIMTAB_KILLS=50 (and TRIMTAB_KILL_SEED) in the environment.
"""

import os
import random
import shutil
import signal
import time

import pytest

import trimtab
from tests.search._chain import write_chain
from tests.search.test_kill_resume import CONFIG, _assert_consistent, _start


# The decision must not hang on a speed race between near-equal candidates. On this chain the
# search's plan (mixed) and fp32 run within ~1.5x of each other; with ONNX Runtime's two threads on
# this busy 2-core machine fp32 / mixed read 1.04-1.49x over 6 fresh runs and 1.87x once, so two
# runs can rank them either way. Two things make the decision comparable without faking it:
# one intra-op thread (the same 6 runs: 1.12-1.20x), and favouring the mixed plan unless fp32 is
# 2x faster (the mechanism the scenarios use: surveillance favours int8 unless others are 1.1x
# faster), a margin far from what is measured; every run that timed afresh checks that premise.
# A kill after the bench needs neither: the resume reuses its timings (state/bench.json).
FAVOUR = ("mixed", 2.0)
RUN_CONFIG = {**CONFIG, "favour": FAVOUR, "threads": 1}


def _decision(summary) -> tuple:
    """What resume must reproduce: the chosen candidate, the search's verified plan and every
    candidate's accuracy."""
    best = summary.search.get("best")
    fallback = summary.candidate(best).fallback_nodes if best else None
    metrics = tuple(sorted((c.name, c.metric_value) for c in summary.candidates))
    return summary.chosen, best, fallback, metrics


def _assert_robust(summary) -> float:
    """The premise: fp32's throughput over the favoured plan's is well inside the margin (1.6x of 2x)."""
    chosen = summary.candidate(summary.chosen)
    fp32 = summary.candidate("fp32")
    assert chosen.precision == FAVOUR[0], summary.reason
    ratio = fp32.throughput_per_s / chosen.throughput_per_s
    assert ratio < FAVOUR[1] / 1.25, f"fp32 is {ratio:.2f}x the mixed plan's throughput: too close to the {FAVOUR[1]}x margin"
    return ratio


@pytest.mark.slow
def test_random_sigkills_leave_a_consistent_folder_that_resumes_to_the_same_decision(tmp_path):
    kills_wanted = int(os.environ.get("TRIMTAB_KILLS", "5"))
    rng = random.Random(int(os.environ.get("TRIMTAB_KILL_SEED", "6")))
    model = tmp_path / "chain.onnx"
    data = write_chain(model, width=128, samples=8000)
    started = time.monotonic()
    fresh = trimtab.tune(model, data, data, trimtab.TuneConfig(**RUN_CONFIG), out=tmp_path / "fresh")
    span = time.monotonic() - started + 1.5  # the subprocess also imports trimtab
    ratios = [_assert_robust(fresh)]
    expected = _decision(fresh)
    run = tmp_path / "run"
    kills, finished, log = 0, 0, []
    while kills < kills_wanted:
        process = _start(model, run, RUN_CONFIG)
        delay = rng.uniform(0.2, 0.8 * span)
        try:
            process.wait(timeout=delay)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: still running, kill it now
            process.send_signal(signal.SIGKILL)
            process.wait()
        if process.returncode == -signal.SIGKILL:
            kills += 1
            log.append(f"kill {kills} at {delay:.2f} s")
            copy = tmp_path / f"resume-{kills}"
            if run.exists():
                _assert_consistent(run)
                if (run / "summary.json").exists():
                    log.append("  (summary.json already written)")
                shutil.copytree(run, copy)
            else:  # killed while still importing, before the run folder existed
                log.append("  (no run folder yet)")
            bench_done = (copy / "state" / "bench.json").exists()
            resumed = trimtab.tune(model, data, data, trimtab.TuneConfig(**RUN_CONFIG), out=copy)
            _assert_consistent(copy)
            assert not list(copy.rglob(".*.tmp")), log
            assert _decision(resumed) == expected, "\n".join(log)
            if bench_done:
                log.append("  (after the bench: its timings reused)")
                assert any("timings are those the interrupted run measured" in note for note in resumed.notes)
            else:
                ratios.append(_assert_robust(resumed))
            shutil.rmtree(copy)
        else:
            assert process.returncode == 0, process.stderr.read().decode()
            finished += 1
            log.append(f"finished before the kill at {delay:.2f} s")
            shutil.rmtree(run)  # start over: a finished folder only resumes trivially
    print("\n".join(log))
    print(f"kills survived: {kills}, all consistent, all resumed to {expected[0]} (search best {expected[1]}); "
          f"runs that finished first: {finished}; fp32 / mixed throughput {min(ratios):.2f}-{max(ratios):.2f}x "
          f"(margin {FAVOUR[1]}x)")
    assert kills == kills_wanted
