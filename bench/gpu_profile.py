"""Where a trimtab gpu engine spends its time: the top CUDA kernels of one profile, by total time.

Run: PYTHONPATH=src python bench/gpu_profile.py resnet50 --batch 256
     PYTHONPATH=src python bench/gpu_profile.py bert --batch 128 --precision fp16 int8-fp16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.gpu_engine import bert_onnx, export, trimtab_engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=["resnet50", "bert"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", nargs="+", default=["fp16"])
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model == "resnet50":
            import torchvision

            path = export(torchvision.models.resnet50().eval(), (torch.randn(1, 3, 224, 224),), ["input"],
                          work / "m.onnx", {"input": {0: "n"}})
            feeds, calib = {"input": torch.randn(args.batch, 3, 224, 224, device="cuda")}, random_images()
        else:
            _, path, calib = bert_onnx(work)
            feeds = {"input_ids": torch.randint(1000, 30000, (args.batch, 128), device="cuda"),
                     "attention_mask": torch.ones(args.batch, 128, dtype=torch.int64, device="cuda")}
        for precision in args.precision:
            profile(path, work, feeds, precision, calib, args.top)


def random_images(count: int = 16):
    """Calibration data for the CNN's 8-bit engines (as bench/gpu_engine.py's bench_cnn)."""
    import numpy as np

    from trimtab.data import Dataset
    from trimtab.data.dataset import Sample

    rng = np.random.default_rng(0)
    return Dataset([Sample({"input": rng.standard_normal((3, 224, 224)).astype(np.float32)}, source=f"r{i}")
                    for i in range(count)], name="random-images")


def profile(path: Path, work: Path, feeds: dict, precision: str, calib, top: int) -> None:
    backend, engine = trimtab_engine(path, work / "cache", {k: v.shape for k, v in feeds.items()}, precision, calib)[:2]
    engine._graph = None  # profile the steps themselves, not one graph launch
    for _ in range(3):
        engine.run(feeds)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            engine.run(feeds)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=60)
    print(f"## {path.stem} {precision} (5 runs)")
    print("\n".join(line[:60] + line[-60:] for line in table.splitlines()), flush=True)
    backend.close()


if __name__ == "__main__":
    main()
