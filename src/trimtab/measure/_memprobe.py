"""Child process for `trimtab.measure.bench.peak_memory_bytes`; run by path, imports no trimtab.

usage: python _memprobe.py ARTIFACT.onnx FEEDS.npz THREADS
Writes one JSON line to stdout: {"baseline_bytes", "peak_bytes", "source"}, where baseline is the
resident set after imports and loading the feeds, and peak is the high-water mark after creating
the session and running one batch.
"""

from __future__ import annotations

import json
import resource
import sys


def _status_bytes(field: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in bytes (Linux only; None elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        return None
    return None


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main(artifact: str, feeds_path: str, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    with np.load(feeds_path, allow_pickle=False) as archive:
        feeds = {name: archive[name] for name in archive.files}
    use_proc = _status_bytes("VmRSS") is not None
    baseline = _status_bytes("VmRSS") if use_proc else _maxrss_bytes()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # same as OrtCpuBackend: a float node must stay float (see backends/ort_cpu.py)
    session = ort.InferenceSession(
        artifact, options, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"]
    )
    wanted = {i.name for i in session.get_inputs()}
    session.run(None, {name: array for name, array in feeds.items() if name in wanted})

    peak = _status_bytes("VmHWM") if use_proc else _maxrss_bytes()
    return {"baseline_bytes": baseline, "peak_bytes": peak, "source": "VmHWM" if use_proc else "ru_maxrss"}


if __name__ == "__main__":
    result = main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    sys.stdout.write(json.dumps(result) + "\n")  # the parent reads this line; this is a child protocol
