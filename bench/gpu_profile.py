"""Where a trimtab gpu engine spends its time: the top CUDA kernels of one profile, by total time.

Run: PYTHONPATH=src python bench/gpu_profile.py resnet50 --batch 256   (or bert --batch 128)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.gpu_engine import export, trimtab_engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=["resnet50"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()
    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = export(torchvision.models.resnet50().eval(), (torch.randn(1, 3, 224, 224),), ["input"],
                      work / "m.onnx", {"input": {0: "n"}})
        x = torch.randn(args.batch, 3, 224, 224, device="cuda")
        backend, engine = trimtab_engine(path, work / "cache", {"input": x.shape}, "fp16")[:2]
        engine._graph = None  # profile the steps themselves, not one graph launch
        for _ in range(3):
            engine.run({"input": x})
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                engine.run({"input": x})
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=60)
        print("\n".join(line[:60] + line[-60:] for line in table.splitlines()))
        backend.close()


if __name__ == "__main__":
    main()
