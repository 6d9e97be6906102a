"""Sections of report.html rendered from summary.json alone: overview, decision, Pareto plot,
candidates, mixed-precision search, scenario, notes and the command to reproduce.

Each function takes the `Summary` and returns HTML; the optional dictionaries (`decision`,
`search`, `scenario`) may be empty or lack keys, and what is absent is left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trimtab.report.charts import Point, pareto_front, pareto_svg
from trimtab.report.markup import DASH, bullet_list, esc, interval, names_cell, note, num, table
from trimtab.report.summary import CandidateSummary, Summary

RULES = {
    "point": "a candidate qualifies when its measured drop (the point estimate) is within the budget",
    "strict": "a candidate qualifies only when the upper end of its drop's 95% interval is within the budget",
}


def overview(summary: Summary) -> str:
    model, target = summary.model or {}, summary.target or {}
    sha = str(model.get("sha256", ""))[:16]
    return (
        f"<p>Model <code>{esc(model.get('path', ''))}</code> (sha256 <code>{esc(sha)}</code>), target "
        f"<code>{esc(target.get('backend', ''))}</code> on {esc(target.get('device', ''))}. Task {esc(summary.task)}, "
        f"metric {esc(summary.metric)}, budget {num(summary.budget, 'g')} points. Baseline "
        f"<code>{esc((summary.baseline or {}).get('name', ''))}</code> at "
        f"{num((summary.baseline or {}).get('metric_value'), '.4f')}.</p>"
    )


def decision(summary: Summary) -> str:
    parts = [f'<p class="reason">Chosen: <b>{esc(summary.chosen)}</b>. {esc(summary.reason)}</p>']
    info = summary.decision if isinstance(summary.decision, dict) else {}
    rows = []
    if info.get("rule") is not None:
        rule = str(info["rule"])
        rows.append(("rule", f"<code>{esc(rule)}</code>: {esc(RULES.get(rule, ''))}"))
    if info.get("objective") is not None:
        rows.append(("objective", esc(info["objective"])))
    if info.get("samples_needed") is not None:
        rows.append(("validation samples needed",
                     f"about {esc(info['samples_needed'])} for the drop's 95% interval to fall within the budget, "
                     "if the drop stays as measured"))
    recommendation = info.get("recommendation")
    if isinstance(recommendation, dict):
        qat = " with quantization-aware training" if recommendation.get("qat") else ""
        rows.append(("recommendation", f"<b>{esc(recommendation.get('precision', ''))}</b>{esc(qat)}: "
                                       f"{esc(recommendation.get('why', ''))}"))
    if rows:
        parts.append("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>")
    warnings = info.get("warnings") or []
    if isinstance(warnings, list) and warnings:
        parts.append('<div class="warn"><b>Warnings</b>' + bullet_list(warnings) + "</div>")
    return "\n".join(parts)


def _drawable(c: CandidateSummary) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in (c.throughput_per_s, c.metric_drop))


def pareto(summary: Summary) -> str:
    drawable = [c for c in summary.candidates if _drawable(c)]
    left_out = [c.name for c in summary.candidates if not _drawable(c)]
    if not drawable:
        return note("No candidate has both a measured drop and a throughput: nothing to plot.")
    points = [Point(c.name, float(c.throughput_per_s), float(c.metric_drop), _tooltip(c, summary.metric))
              for c in drawable]
    budget = summary.budget if isinstance(summary.budget, (int, float)) else None
    svg = pareto_svg(points, summary.chosen, budget, x_label="throughput (samples/s, higher is better)",
                     y_label=f"drop in {summary.metric} vs fp32, points (better is up)")
    front = ", ".join(f"<code>{esc(name)}</code>" for name in pareto_front(points))
    parts = [f'<figure class="chart">{svg}<figcaption>Each candidate\'s accuracy drop against its throughput. '
             "Candidates on the Pareto front (green staircase) are not beaten on both at once by any other; "
             f"the dashed line is the budget.</figcaption></figure>", f"<p>On the Pareto front: {front}.</p>"]
    if left_out:
        parts.append(note(f"Not plotted (no finite drop or throughput): {', '.join(left_out)}."))
    return "\n".join(parts)


def _tooltip(c: CandidateSummary, metric: str) -> str:
    return (f"{c.name}: {metric} {num(c.metric_value, '.4f')}, drop {num(c.metric_drop, '+.2f')} points "
            f"{interval(c.metric_ci95)}, {num(c.throughput_per_s, '.1f')}/s, {num(c.speedup_vs_fp32, '.2f')}x fp32")


CANDIDATE_HEADERS = ("candidate", "precision", "{metric}", "drop (points)", "95% CI of drop", "throughput /s",
                     "vs fp32", "p50 ms", "p99 ms", "batch", "size MB", "peak mem MB", "p-value", "fallback nodes",
                     "within budget")


def candidates(summary: Summary) -> str:
    headers = [h.format(metric=summary.metric) for h in CANDIDATE_HEADERS]
    if (summary.target or {}).get("backend") == "gpu":  # the engine's GPU allocations, not a process's RSS
        headers[CANDIDATE_HEADERS.index("peak mem MB")] = "peak GPU mem MB"
    rows = [_candidate_cells(c) for c in summary.candidates]
    if not any(c.fallback_nodes for c in summary.candidates):  # no mixed plan: drop the empty column
        column = CANDIDATE_HEADERS.index("fallback nodes")
        headers.pop(column)
        for row in rows:
            row.pop(column)
    classes = ["chosen" if c.name == summary.chosen else ("" if c.within_budget else "over")
               for c in summary.candidates]
    return (table(headers, rows, row_classes=classes, cls="candidates") +
            "<p>Speed ratios are medians of per-round ratios to fp32 timed in the same interleaved rounds; "
            "the bracket is their 10th-90th percentile spread. The chosen row is green; rows over the budget "
            "are red.</p>")


def _candidate_cells(c: CandidateSummary) -> list[str]:
    ratio = num(c.speedup_vs_fp32, ".2f", "x")
    if c.speedup_spread and len(c.speedup_spread) == 2:
        ratio += f" [{num(c.speedup_spread[0], '.2f')}-{num(c.speedup_spread[1], '.2f')}]"
    latency = c.latency_ms or {}
    return [
        esc(c.name), esc(c.precision), num(c.metric_value, ".4f"), num(c.metric_drop, "+.2f"),
        interval(c.metric_ci95), num(c.throughput_per_s, ".1f"), ratio, num(latency.get("p50"), ".2f"),
        num(latency.get("p99"), ".2f"), esc(c.batch_size), num(c.model_bytes / 1e6 if c.model_bytes else None, ".1f"),
        num(c.peak_mem_bytes / 1e6 if c.peak_mem_bytes else None, ".0f"), num(c.p_value, ".3g"),
        names_cell(c.fallback_nodes) if c.fallback_nodes else "", "yes" if c.within_budget else "no",
    ]


def layer_precisions(summary: Summary) -> str | None:
    """Per candidate whose backend chose kernels per layer (the gpu engine's int8 layers): how many
    layers ran in each precision, and which ran in something else than the artifact asked."""
    rows = []
    for c in summary.candidates:
        ran = c.layer_precisions if isinstance(c.layer_precisions, dict) else {}
        if not ran:
            continue
        counts = {p: sum(1 for v in ran.values() if v == p) for p in sorted(set(ran.values()))}
        moved = [name for name, p in ran.items() if p != c.precision]
        rows.append([esc(c.name), esc(c.precision), ", ".join(f"{esc(p)}: {n}" for p, n in counts.items()),
                     names_cell(moved) if moved else DASH])
    if not rows:
        return None
    return (table(["candidate", "artifact precision", "layers ran in", "layers not in the artifact's precision"],
                  rows, cls="layers") +
            "<p>Timed per layer when the engine was built: where a layer's low-precision kernel was slower than "
            "the float path for its shape, the engine ran it in float (as TensorRT does).</p>")


SEARCH_FACTS = (("status", "status"), ("start", "started from"), ("evaluations", "evaluations"),
                ("reused", "reused from an earlier run"), ("seconds", "seconds"),
                ("ranking_seconds", "of which ranking"), ("best", "best plan"), ("why", "why"))


def search(summary: Summary) -> str | None:
    info = summary.search if isinstance(summary.search, dict) else {}
    if not info:
        return None
    facts = [(label, info[key]) for key, label in SEARCH_FACTS if info.get(key) is not None]
    parts = ["<p>" + "; ".join(f"{esc(label)}: <b>{esc(_plain(value))}</b>" for label, value in facts) + ".</p>"
             if facts else ""]
    steps = info.get("steps")
    if isinstance(steps, list) and steps:  # keys of search/mixed.py's Step.to_dict()
        rows = [_step_cells(step) for step in steps if isinstance(step, dict)]
        best = info.get("best_step") or info.get("best")
        classes = ["chosen" if best is not None and step.get("plan") == best else ""
                   for step in steps if isinstance(step, dict)]
        parts.append(table(["plan", "fallback groups", "fallback nodes", "metric", "drop (points)", "95% CI",
                            "within budget", "est. cost ms", "artifact"], rows, row_classes=classes, cls="search"))
    elif info.get("status") != "skipped":
        parts.append(note("The search verified no plan."))
    return "\n".join(p for p in parts if p)


def _step_cells(step: dict[str, Any]) -> list[str]:
    ok = step.get("within_budget", step.get("passes"))
    nodes = step.get("fallback_nodes")
    return [
        esc(step.get("plan", "")), esc(_plain(step.get("fallback_groups", DASH))),
        names_cell(nodes) if isinstance(nodes, list) and nodes else DASH,
        num(step.get("metric_value"), ".4f"), num(step.get("drop"), "+.2f"), interval(step.get("ci95")),
        DASH if ok is None else ("yes" if ok else "no"), num(step.get("est_cost_ms"), ".3g"),
        f"<code>{esc(step.get('artifact', ''))}</code>",
    ]


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return num(value, ".3g")
    return str(value)


SCENARIO_KEYS = ("name", "description", "objective", "batch_size", "budget", "rule")


def scenario(summary: Summary) -> str | None:
    info = summary.scenario if isinstance(summary.scenario, dict) else {}
    if not info:
        return None
    keys = [k for k in SCENARIO_KEYS if k in info] + [k for k in info if k not in SCENARIO_KEYS]
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(_plain(info[k]))}</dd>" for k in keys) + "</dl>"


def notes(summary: Summary) -> str | None:
    return bullet_list(summary.notes) or None


def reproduce(summary: Summary, run_dir: Path | None) -> str:
    again = f"trimtab report {run_dir}" if run_dir is not None else "trimtab report RUN_DIR"
    command = summary.command or "(not recorded)"
    return (f"<p>The run:</p><pre class=\"command\">{esc(command)}</pre>"
            f"<p>This page again, from the saved files alone:</p><pre>{esc(again)}</pre>"
            f"<p>trimtab {esc(summary.trimtab_version)}, summary schema {esc(summary.schema_version)}"
            + (", stage seconds: " + ", ".join(f"{esc(k)} {num(v, '.1f')}" for k, v in summary.timings_s.items())
               if summary.timings_s else "") + ".</p>")

