"""Fault injection (issue 6): `tune` killed with SIGKILL at random moments, again and again, in one
run folder. After every kill the folder is consistent (every finished file whole, no summary
without a finished run) and a resume of a copy of it completes with the fresh run's decision.

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


def _decision(summary) -> tuple:
    """What resume must reproduce: the search's verified plan and every candidate's accuracy.
    `summary.chosen` is left out: between candidates of equal accuracy it follows the speed race,
    which is timed afresh on every run (two fresh runs on a busy 2-core machine can differ)."""
    best = summary.search.get("best")
    fallback = summary.candidate(best).fallback_nodes if best else None
    metrics = tuple(sorted((c.name, c.metric_value) for c in summary.candidates))
    return best, fallback, metrics


@pytest.mark.slow
def test_random_sigkills_leave_a_consistent_folder_that_resumes_to_the_same_decision(tmp_path):
    kills_wanted = int(os.environ.get("TRIMTAB_KILLS", "5"))
    rng = random.Random(int(os.environ.get("TRIMTAB_KILL_SEED", "6")))
    model = tmp_path / "chain.onnx"
    data = write_chain(model, width=128, samples=8000)
    started = time.monotonic()
    fresh = trimtab.tune(model, data, data, trimtab.TuneConfig(**CONFIG), out=tmp_path / "fresh")
    span = time.monotonic() - started + 1.5  # the subprocess also imports trimtab
    expected = _decision(fresh)
    run = tmp_path / "run"
    kills, finished, log = 0, 0, []
    while kills < kills_wanted:
        process = _start(model, run)
        delay = rng.uniform(0.2, 0.8 * span)
        try:
            process.wait(timeout=delay)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: still running, kill it now
            process.send_signal(signal.SIGKILL)
            process.wait()
        if process.returncode == -signal.SIGKILL:
            kills += 1
            log.append(f"kill {kills} at {delay:.2f} s")
            _assert_consistent(run)
            if (run / "summary.json").exists():
                log.append("  (summary.json already written)")
            copy = tmp_path / f"resume-{kills}"
            shutil.copytree(run, copy)
            resumed = trimtab.tune(model, data, data, trimtab.TuneConfig(**CONFIG), out=copy)
            _assert_consistent(copy)
            assert not list(copy.rglob(".*.tmp")), log
            assert _decision(resumed) == expected, "\n".join(log)
            shutil.rmtree(copy)
        else:
            assert process.returncode == 0, process.stderr.read().decode()
            finished += 1
            log.append(f"finished before the kill at {delay:.2f} s")
            shutil.rmtree(run)  # start over: a finished folder only resumes trivially
    print("\n".join(log))
    print(f"kills survived: {kills}, all consistent, all resumed to search best {expected[0]}; "
          f"runs that finished first: {finished}")
    assert kills == kills_wanted
