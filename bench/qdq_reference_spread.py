"""How far apart two correct runs of the same 8-bit Q/DQ file are, on BERT-base: the yardstick for
the issue's "SQNR >= 30 dB against ONNX Runtime" check.

For the fp8 and int8 (+ fp16 elsewhere) artifacts of bench/gpu_engine.py's BERT-base (random
weights, minmax calibration on 16 random sequences, here on the CPU), at batch 8 x 128 tokens:
  trimtab's engine on the CPU (float64 reference GEMMs for the 8-bit layers)  vs ONNX Runtime CPU
  trimtab                                                                      vs ONNX Runtime, optimisations off
  ONNX Runtime                                                                 vs ONNX Runtime, optimisations off
Output SQNR (dB) and the smallest token cosine over unpadded tokens. A tiny rounding difference
(ONNX Runtime sums the embeddings' two fp16 Adds in fp32 and rounds once) flips some 8-bit codes
at the first Q/DQ and grows through 12 layers, so even ONNX Runtime against itself lands near
the 30 dB line for int8, and under it for fp8.

Run (needs transformers): PYTHONPATH=src:.:bench python bench/qdq_reference_spread.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.gpu_engine import bert_onnx, token_cosine
from trimtab.backends.gpu import GpuBackend
from trimtab.backends.ort_cpu import OrtCpuBackend
from trimtab.build import build_fp8, build_int8
from trimtab.calibrate import calibrate
from trimtab.load import load_model
from trimtab.measure.metrics import sqnr_db


def artifact(path: Path, calib, precision: str):
    model = load_model(path)
    calibration = calibrate(model, calib, "minmax", batch_size=8)
    skip = set(calibration.float_tensors)
    if precision == "fp8":
        return build_fp8(model, calibration.ranges, method_name="minmax", skip_tensors=skip).proto
    return build_int8(model, calibration.ranges, "tensorrt", method_name="minmax", skip_tensors=skip,
                      unquantized="fp16").proto


def feeds_of(batch: int = 8, seq: int = 128) -> dict:
    """The feeds of bench/gpu_engine.py's reference check: random ids, the second half padded."""
    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(1000, 30000, (batch, seq)).astype(np.int64),
             "attention_mask": np.ones((batch, seq), np.int64)}
    feeds["attention_mask"][batch // 2:, seq - 16:] = 0
    return feeds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, path, calib = bert_onnx(Path(tmp))
        feeds = feeds_of()
        mask = torch.from_numpy(feeds["attention_mask"])
        print("| artifact | pair | SQNR dB | min token cosine |\n| --- | --- | --- | --- |")
        for precision in ("fp8", "int8-fp16"):
            proto = artifact(path, calib, precision)
            runs = {}
            with OrtCpuBackend(proto, threads=2) as ort:
                runs["ONNX Runtime"] = ort.infer(feeds)[ort.output_names[0]]
            with OrtCpuBackend(proto, threads=2, optimize=False) as ort:
                runs["ONNX Runtime, optimisations off"] = ort.infer(feeds)[ort.output_names[0]]
            with GpuBackend(proto, device="cpu", cache=False) as engine:
                runs["trimtab (CPU reference)"] = engine.infer(feeds)[engine.output_names[0]]
            for a, b in [("trimtab (CPU reference)", "ONNX Runtime"),
                         ("trimtab (CPU reference)", "ONNX Runtime, optimisations off"),
                         ("ONNX Runtime", "ONNX Runtime, optimisations off")]:
                got, want = runs[a].astype(np.float32), runs[b].astype(np.float32)
                cos = token_cosine(torch.from_numpy(got), torch.from_numpy(want), mask)
                print(f"| {precision} | {a} vs {b} | {sqnr_db(got, want):.1f} | {cos:.5f} |", flush=True)


if __name__ == "__main__":
    main()
