"""Every tile config of the ping-pong int8 GEMM (`lowbit_gluon.qgemm_pingpong_kernel`) on BERT-base's
four int8 GEMMs at batch 128, launched directly (no autotuner), against the Triton kernel the engine
would otherwise run. One GPU run; shows which configs the autotuner chooses between and by how much,
and checks each config's outputs against the Triton kernel's (share of outputs that differ).

Layers and operands as in bench/int8_async.py. Timing: `triton.testing.do_bench_cudagraph` (GPU
time of a CUDA graph of calls), median, us.

Run: PYTHONPATH=src:bench python bench/pingpong_configs.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _support import report_us
from int8_async import LAYERS, operands
from trimtab.backends.gpu import lowbit


def main() -> None:
    from triton.testing import do_bench_cudagraph

    from trimtab.backends.gpu import lowbit_gluon as gluon

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    times, checks = {}, {}
    with torch.inference_mode():
        for layer, (k, n, act, eight_bit, residual) in LAYERS.items():
            o = operands(torch.int8, k, n, residual)
            out_dtype, out_scale = (torch.int8, 0.05) if eight_bit else (torch.float16, None)

            def triton_run(o=o, act=act, out_dtype=out_dtype, out_scale=out_scale):
                return lowbit.qgemm(o["x_q"], o["w_q"], o["col"], o["bias"], act, out_dtype, out_scale, tma=True,
                                    residual=o["residual"], async_int8=False)

            want = triton_run()
            times[f"{layer}: Triton"] = do_bench_cudagraph(triton_run)  # ms
            res_args = lowbit._residual_args(o["residual"], o["col"])
            flags = dict(HAS_BIAS=True, ACT=lowbit.ACTS[act], OUT_Q=int(eight_bit), RESIDUAL=2 if residual else 0)
            out = torch.empty_like(want)
            for config, run in gluon.config_runs(o["x_q"], o["w_q"], out, o["col"], o["bias"], res_args,
                                                 1.0 if out_scale is None else out_scale, flags, sms):
                meta = config.kwargs
                name = f"{layer}: ping-pong {meta['BLOCK_M']}x{meta['BLOCK_N']}x{meta['BLOCK_K']} s{meta['STAGES']}"
                out.zero_()
                run()
                checks[name] = f"outputs differing {float((out != want).float().mean()):.1e}"
                times[name] = do_bench_cudagraph(run)
    report_us("pingpong_configs", times, checks, args.out)


if __name__ == "__main__":
    main()
