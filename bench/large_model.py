"""A model over protobuf's 2 GB limit, end to end (issue 6): `trimtab tune` on a 2.18 GB MatMul
chain with its weights in external data, timed, with the peak RSS of the tune process.

    PYTHONPATH=src:. .venv/bin/python bench/large_model.py --out /tmp/trimtab-large

writes OUT/model/big.onnx + weights.bin (once), OUT/calib.npz, OUT/val.npz, runs
`trimtab tune` into OUT/run and writes bench/results/large_model.json. The model is
x[N, 8192] -> (MatMul 8192x8192 -> Relu) x 8 -> MatMul 8192x1000, random fp32 weights.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WIDTH, LAYERS, CLASSES = 8192, 8, 1000  # 8 x 256 MiB + 31 MiB of fp32 weights: 2.18 GB


def write_big_model(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    """The model, its weights streamed to weights.bin one layer at a time; returns its path and
    numpy's output for `x`."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    nodes, initializers, previous, h = [], [], "x", x
    with open(folder / "weights.bin", "wb") as data:
        for i in range(LAYERS + 1):
            shape = (WIDTH, CLASSES if i == LAYERS else WIDTH)
            w = rng.standard_normal(shape, dtype=np.float32)
            w *= np.float32(np.sqrt(2.0 / WIDTH))
            offset = data.tell()
            w.tofile(data)
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=shape,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "weights.bin"), ("offset", offset), ("length", w.nbytes)):
                tensor.external_data.add(key=key, value=str(value))
            initializers.append(tensor)
            h = h @ w
            nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
            if i < LAYERS:
                h = np.maximum(h, 0)
                nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
                previous = f"r{i}"
            del w
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info(f"h{LAYERS}", TensorProto.FLOAT, ["N", CLASSES])],
                              initializers)
    path = folder / "big.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--tune-args", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    model_dir = args.out / "model"
    if not (model_dir / "big.onnx").exists():
        model_dir.mkdir(parents=True, exist_ok=True)
        write_big_model(model_dir, np.zeros((1, WIDTH), np.float32))
    rng = np.random.default_rng(2)
    for name, count in (("calib", args.calib), ("val", args.val)):
        np.savez(args.out / f"{name}.npz", x=rng.standard_normal((count, WIDTH)).astype(np.float32))
    shutil.rmtree(args.out / "run", ignore_errors=True)
    command = [sys.executable, "-m", "trimtab.cli.main", "tune", str(model_dir / "big.onnx"),
               "--calib", str(args.out / "calib.npz"), "--val", str(args.out / "val.npz"), "--task", "generic",
               "--out", str(args.out / "run"), "--no-progress", *args.tune_args]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child: the tune
    print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    summary = json.loads((args.out / "run" / "summary.json").read_text()) if done.returncode == 0 else {}
    result = {"command": " ".join(command[1:]), "returncode": done.returncode, "seconds": round(seconds, 1),
              "peak_rss_gib": round(peak / 2**30, 2), "timings_s": summary.get("timings_s"),
              "chosen": summary.get("chosen"),
              "candidates": [{k: c.get(k) for k in ("name", "metric_value", "metric_drop", "throughput_per_s",
                                                    "model_bytes", "peak_mem_bytes")}
                             for c in summary.get("candidates", [])]}
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "large_model.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
