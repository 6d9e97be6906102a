"""Issue 4 kill test on a real model: `trimtab tune` on MiniLM killed with SIGKILL at several
moments, then resumed with the same command into the same run folder.

    fresh    one uninterrupted run: its chosen candidate, search answer and evaluations run
    kill@T   a run killed T seconds after it started, then the same command again; recorded:
             what the kill interrupted (the last stage started in log.txt), whether every finished
             file in the folder is whole (JSON parses, ONNX checks, npz opens), the resumed run's
             answer and how many evaluations it ran and reused

    PYTHONPATH=src python bench/search_kill.py [--kills 20,step1,step2] [--write docs/perf.md]

A kill point is seconds after the start (`20`) or `stepN`: as soon as the run has saved N verified
search steps (polled every 10 ms), so a kill lands inside the search whatever the machine's speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import write_marked_block

from trimtab.resume import damaged_files

MARKER = "search_kill"
ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["tune", "example:minilm", "--budget", "0.5", "--no-smoothing", "--method", "minmax",
           "--bench-seconds", "4", "--no-progress"]


def trimtab(out: Path) -> list[str]:
    return [sys.executable, "-m", "trimtab.cli.main", *COMMAND, "--out", str(out)]


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def run_to_end(out: Path) -> dict:
    began = time.perf_counter()
    subprocess.run(trimtab(out), env=environment(), check=True, capture_output=True)
    return answer(out, time.perf_counter() - began)


def saved_steps(out: Path) -> int:
    try:
        return len(json.loads((out / "state" / "search-steps.json").read_text())["steps"])
    except (OSError, ValueError, KeyError):
        return 0


def run_and_kill(out: Path, point: str) -> str:
    process = subprocess.Popen(trimtab(out), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began = time.monotonic()
    while process.poll() is None:
        due = (saved_steps(out) >= int(point[4:])) if point.startswith("step") else \
            (time.monotonic() - began >= float(point))
        if due:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    if process.wait() == 0:
        return "finished before the kill"
    stages = [line.split("stage ", 1)[1].split(" ")[0] for line in (out / "log.txt").read_text().splitlines()
              if "stage " in line and line.rstrip().endswith("...")]
    steps = (out / "state" / "search-steps.json")
    verified = len(json.loads(steps.read_text())["steps"]) if steps.exists() else 0
    return f"{stages[-1] if stages else 'start-up'} ({verified} search step(s) saved)"


def consistent(out: Path) -> tuple[int, list[str]]:
    """(finished files checked, damaged ones)."""
    checked = sum(1 for path in out.rglob("*") if path.is_file() and not path.name.startswith("."))
    return checked, damaged_files(out)


def answer(out: Path, seconds: float) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    search = summary["search"]
    best = next((c for c in summary["candidates"] if c["name"] == search.get("best")), None)
    return {"chosen": summary["chosen"], "best": search.get("best"), "nodes": best["fallback_nodes"] if best else [],
            "metric": best["metric_value"] if best else None, "run": search["evaluations_total"]["run"],
            "reused": search["evaluations_total"]["reused"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", default="20,step1,step2",
                        help="kill points: seconds after the start, or stepN (after N saved search steps)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="trimtab-kill-") as tmp:
        fresh = run_to_end(Path(tmp) / "fresh")
        rows.append(("fresh", "-", "-", fresh))
        for point in args.kills.split(","):
            out = Path(tmp) / f"kill-{point}"
            interrupted = run_and_kill(out, point)
            checked, problems = consistent(out)
            resumed = run_to_end(out)
            whole = f"{checked} files, all whole" if not problems else f"{checked} files; corrupt: {', '.join(problems)}"
            label = f"kill after {point[4:]} search step(s)" if point.startswith("step") else f"kill at {point} s"
            rows.append((label, interrupted, whole, resumed))
    lines = table(rows, fresh, args)
    print("\n".join(lines))
    if args.write:
        write_marked_block(args.write, MARKER, lines)


def table(rows, fresh: dict, args) -> list[str]:
    lines = ["## Kill and resume on MiniLM (issue 4)", "",
             f"Produced by `PYTHONPATH=src python bench/search_kill.py --kills {args.kills} --write docs/perf.md`: "
             f"`trimtab {' '.join(COMMAND)} --out DIR`, killed with SIGKILL, then the same command again.", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{len(os.sched_getaffinity(0))} logical cores", "",
             "| run | killed during | run folder after the kill | chosen | search answer (fp32 nodes, cosine) "
             "| same answer as fresh | evaluations run / reused | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, interrupted, whole, result in rows:
        same = "-" if name == "fresh" else ("yes" if (result["best"], result["nodes"], result["metric"]) ==
                                            (fresh["best"], fresh["nodes"], fresh["metric"]) else "NO")
        metric = f"{result['metric']:.4f}" if result["metric"] is not None else "-"
        lines.append(f"| {name} | {interrupted} | {whole} | {result['chosen']} | {result['best']} "
                     f"({len(result['nodes'])}, {metric}) | {same} | {result['run']} / {result['reused']} "
                     f"| {result['seconds']:.0f} |")
    return lines


if __name__ == "__main__":
    main()
