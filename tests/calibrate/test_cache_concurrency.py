"""Two or more trimtab processes sharing a calibration cache folder (issue 6): they never corrupt
it, and the file lock lets only one of them collect the histograms; the others wait and reuse them."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from trimtab._io import file_lock

ROOT = Path(__file__).resolve().parents[2]
WORKER = """
import json, sys, time
from pathlib import Path
import numpy as np
import trimtab
from trimtab.calibrate import calibrate
from tests.search._chain import write_chain
model_path, cache, start, out = sys.argv[1:5]
data = write_chain(model_path + ".unused.onnx", width=64, samples=600)
model = trimtab.load_model(model_path)
while not Path(start).exists():
    time.sleep(0.005)
results = []
for method in ("minmax", "entropy", "percentile", "mse"):
    c = calibrate(model, data, method, cache_dir=cache, batch_size=8)
    results.append({"method": method, "from_cache": c.from_cache,
                    "ranges": {k: [r.amax, r.min, r.max] for k, r in sorted(c.ranges.items())}})
Path(out).write_text(json.dumps(results))
"""


def test_processes_sharing_a_cache_collect_once_and_agree(tmp_path):
    from tests.search._chain import write_chain

    model = tmp_path / "chain.onnx"
    write_chain(model, width=64, samples=600)
    cache, start = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(model), str(cache), str(start), str(tmp_path / f"r{i}.json")],
                         env=env, cwd=ROOT, stderr=subprocess.PIPE)
        for i in range(4)
    ]
    time.sleep(1.0)
    start.touch()  # all four begin together, on an empty cache
    for worker in workers:
        assert worker.wait(timeout=240) == 0, worker.stderr.read().decode()
    results = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(4)]
    collected = [r[0]["from_cache"] for r in results].count(False)
    assert collected == 1, f"{collected} processes collected histograms; the lock should let one"
    for method_index in range(4):
        assert len({json.dumps(r[method_index]["ranges"]) for r in results}) == 1
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    with np.load(entry / "histograms.npz", allow_pickle=False) as data:
        assert data.files
    assert len(list(entry.glob("ranges-*.json"))) == 4
    assert not list(entry.glob(".*.tmp"))


def test_file_lock_excludes_a_second_process(tmp_path):
    target = tmp_path / "entry"
    probe = (
        "import fcntl, sys\n"
        f"handle = open({str(tmp_path / '.entry.lock')!r}, 'a+b')\n"
        "try:\n    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\n"
        "except BlockingIOError:\n    print('held')\n"
    )
    run = lambda: subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()  # noqa: E731
    with file_lock(target):
        assert run() == "held"
    assert run() == "free"
    with file_lock(target, shared=True):
        assert run() == "held"  # a writer waits for readers
