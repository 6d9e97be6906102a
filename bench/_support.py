"""Bench-only helpers shared by the scripts in bench/."""

from __future__ import annotations

from pathlib import Path


def write_marked_block(path: Path, name: str, lines: list[str], title: str = "") -> None:
    """Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in `path` with
    `lines`, keeping everything outside the markers (sections other benches or people wrote).
    Where the markers are missing the block is appended (after `title` if the file is new).
    The file is read and rewritten at once (atomically), so concurrent writers lose nothing
    unless they write within the same instant."""
    from trimtab._io import atomic_write_text

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = "\n".join([start, *lines, end])
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if found_start and found_end:
        text = head + block + tail
    elif text.strip():
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = (f"{title}\n\n" if title else "") + block + "\n"
    atomic_write_text(path, text)


def package_version(name: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def gpu_environment() -> dict:
    """Date, GPU name, torch and triton versions: the header every GPU bench prints and saves."""
    import time

    import torch
    import triton

    return {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__}


def cuda_time_ms(fn, iters: int) -> float:
    """Mean milliseconds of `fn` over `iters` back-to-back calls, by CUDA events."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def cuda_interleaved(variants: dict, rounds: int, iters: int) -> dict[str, float]:
    """Median over `rounds` of each variant's `cuda_time_ms`, the variants taking turns in every
    round (after three warm-up calls each), so drifting clocks favour none of them."""
    import statistics

    import torch

    for fn in variants.values():
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(cuda_time_ms(fn, iters))
    return {name: float(statistics.median(v)) for name, v in samples.items()}


def cuda_graph_interleaved(variants: dict, rounds: int, iters: int) -> dict[str, float]:
    """Like `cuda_interleaved`, but each variant's `iters` calls are captured once as a CUDA graph
    and the graph is replayed: the GPU time alone, without Python's launch cost per call (Triton's
    launcher takes tens of microseconds, more than a small kernel runs), as an engine running
    from a CUDA graph sees it. Milliseconds per call, median over rounds."""
    import statistics

    import torch

    for fn in variants.values():
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    graphs = {}
    for name, fn in variants.items():
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(iters):
                fn()
        graphs[name] = graph
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, graph in graphs.items():
            samples[name].append(cuda_time_ms(graph.replay, 1) / iters)
    return {name: float(statistics.median(v)) for name, v in samples.items()}


def report_us(name: str, times: dict[str, float], checks: dict[str, str], out) -> None:
    """Print the environment, the checks and a table of microseconds per variant; with `out` (a
    folder) also save them as `name`.json there."""
    import json

    env = gpu_environment()
    rows = [(variant, round(ms * 1000, 1)) for variant, ms in times.items()]
    print(json.dumps(env))
    for key, value in checks.items():
        print(f"check {key}: {value}")
    print(f"{'variant':48} {'us':>8}")
    for variant, us in rows:
        print(f"{variant:48} {us:8.1f}")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows, "checks": checks}, indent=1))
