"""report.html: a plain, self-contained page rendered from summary.json alone (no re-runs,
no remote resources; every model-derived string is escaped)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from trimtab._io import atomic_write_text
from trimtab.report.summary import CandidateSummary, Summary

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr.chosen{background:#e8f6e8;font-weight:bold}tr.over{color:#a33}
.reason{font-size:1.1em;padding:.6em;background:#f6f8fa;border-left:4px solid #2a7}
code{background:#f3f3f3;padding:0 .2em}
"""


def render_report(summary: Summary) -> str:
    rows = "\n".join(_row(c, summary.chosen) for c in summary.candidates)
    notes = "".join(f"<li>{escape(note)}</li>" for note in summary.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>trimtab: {escape(Path(summary.model['path']).name)}</title>
<style>{_STYLE}</style></head><body>
<h1>trimtab report</h1>
<p>Model <code>{escape(summary.model['path'])}</code> (sha256 <code>{escape(summary.model['sha256'][:16])}</code>),
target <code>{escape(summary.target['backend'])}</code> on {escape(summary.target.get('device', ''))}.
Task {escape(summary.task)}, metric {escape(summary.metric)}, budget {summary.budget:g} points.</p>
<h2>Decision</h2>
<p class="reason">Chosen: <b>{escape(summary.chosen)}</b>. {escape(summary.reason)}</p>
<h2>Candidates</h2>
<table><thead><tr><th>candidate</th><th>{escape(summary.metric)}</th><th>drop (points)</th><th>95% CI of drop</th>
<th>throughput /s</th><th>vs fp32</th><th>p50 ms</th><th>p99 ms</th><th>batch</th><th>size MB</th><th>peak mem MB</th>
<th>within budget</th></tr></thead><tbody>
{rows}
</tbody></table>
<p>Speed ratios are medians of per-round ratios to fp32 timed in the same interleaved rounds;
the bracket is their 10th-90th percentile spread.</p>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<h2>Reproduce</h2><pre>{escape(summary.command)}</pre>
<p>trimtab {escape(summary.trimtab_version)}</p>
</body></html>
"""


def _row(c: CandidateSummary, chosen: str) -> str:
    cls = "chosen" if c.name == chosen else ("over" if not c.within_budget else "")
    ratio = "" if c.speedup_vs_fp32 is None else f"{c.speedup_vs_fp32:.2f}x"
    if c.speedup_spread:
        ratio += f" [{c.speedup_spread[0]:.2f}-{c.speedup_spread[1]:.2f}]"
    mem = "" if c.peak_mem_bytes is None else f"{c.peak_mem_bytes / 1e6:.0f}"
    cells = [
        escape(c.name),
        f"{c.metric_value:.4f}",
        f"{c.metric_drop:+.2f}",
        f"[{c.metric_ci95[0]:+.2f}, {c.metric_ci95[1]:+.2f}]",
        f"{c.throughput_per_s:.1f}",
        ratio,
        f"{c.latency_ms.get('p50', float('nan')):.2f}",
        f"{c.latency_ms.get('p99', float('nan')):.2f}",
        str(c.batch_size),
        f"{c.model_bytes / 1e6:.1f}",
        mem,
        "yes" if c.within_budget else "no",
    ]
    return f'<tr class="{cls}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def write_report(summary: Summary, path: str | Path) -> Path:
    return atomic_write_text(path, render_report(summary))
