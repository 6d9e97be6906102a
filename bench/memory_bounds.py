"""Peak memory of calibration and evaluation as the number of samples grows (issue 6).

Each (model, samples, stage) runs in a fresh subprocess that reads its own peak RSS (VmHWM) at the
end, as `trimtab.measure.peak_memory_bytes` does. Data streams from disk: ResNet-50 (own definition,
random weights, bench/resnet50.py) reads a folder of synthetic 224x224 JPEGs, MiniLM a text file of
synthetic sentences. Flat = the largest peak within 10% of the smallest.

    PYTHONPATH=src:. .venv/bin/python bench/memory_bounds.py --models minilm resnet50 --samples 100 500 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, tempfile
from pathlib import Path
import trimtab
from trimtab.calibrate import calibrate
from trimtab.data import Dataset, ImageTransform
from trimtab.backends import get_backend
from trimtab.measure import collect_outputs

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

kind, model_path, data_path, stage = sys.argv[1:5]
if kind == "minilm":
    from trimtab.examples import get_example
    transform = get_example("minilm").transform()
else:
    transform = ImageTransform.preset("imagenet")
model = trimtab.load_model(model_path)
dataset = Dataset(data_path, transform)
before = rss("VmRSS")
if stage == "calibrate":
    with tempfile.TemporaryDirectory() as cache:
        calibrate(model, dataset, "entropy", cache_dir=cache, batch_size=8)
else:
    with get_backend("ort-cpu", model.proto) as backend:
        outputs = collect_outputs(backend, dataset, batch_size=8)
print(json.dumps({"samples": len(dataset), "rss_before": before, "peak": rss("VmHWM")}))
"""


def _resnet50(folder: Path) -> Path:
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from resnet50 import ResNet50, calibrate_bn

    from trimtab.load.torch_export import export_module

    path = folder / "resnet50.onnx"
    model = calibrate_bn(ResNet50().eval())
    export_module(model, {"input": torch.randn(1, 3, 224, 224)}, path, output_names=["output"])
    return path


def _images(folder: Path, count: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (256, 256, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=85)
    return folder


def _sentences(path: Path, count: int) -> Path:
    import random

    rng = random.Random(0)
    words = "the a model quantized fast slow accurate memory stream sample batch layer weight cat dog".split()
    path.write_text("".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 60))) + "\n"
                            for _ in range(count)), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["minilm", "resnet50"])
    parser.add_argument("--samples", nargs="+", type=int, default=[100, 500, 2000])
    parser.add_argument("--stages", nargs="+", default=["calibrate", "evaluate"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory_bounds.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind in args.models:
            if kind == "minilm":
                from trimtab.examples import get_example

                model_path = get_example("minilm").model_path()
            else:
                model_path = _resnet50(tmp)
            for count in args.samples:
                data = _sentences(tmp / f"s{count}.txt", count) if kind == "minilm" else _images(tmp / f"i{count}", count)
                for stage in args.stages:
                    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(model_path), str(data), stage],
                                          capture_output=True, text=True, cwd=ROOT)
                    if done.returncode != 0:
                        raise SystemExit(done.stderr[-2000:])
                    row = {"model": kind, "stage": stage, **json.loads(done.stdout.strip().splitlines()[-1])}
                    results.append(row)
                    print(f"{kind:9s} {stage:9s} {row['samples']:5d} samples: peak {row['peak'] / 2**20:7.1f} MiB "
                          f"(after loading {row['rss_before'] / 2**20:7.1f} MiB)", flush=True)
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for kind in args.models:
        for stage in args.stages:
            peaks = [r["peak"] for r in results if r["model"] == kind and r["stage"] == stage]
            if peaks:
                print(f"{kind} {stage}: max/min peak {max(peaks) / min(peaks):.3f} ({'flat' if max(peaks) <= 1.1 * min(peaks) else 'NOT flat'})")


if __name__ == "__main__":
    main()
