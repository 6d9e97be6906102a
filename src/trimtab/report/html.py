"""report.html: one self-contained page rendered from the saved results alone (no re-runs).

    render_report(summary, run_dir=None) -> str    summary.json's sections, plus the run
                                                   folder's optional files when `run_dir` is given
    write_report(summary, path) -> Path            renders with the folder that holds `path`
    render_run_folder(run_dir) -> str              everything from the files of a finished run
    write_report_for_run(run_dir) -> Path          ... written to run_dir/report.html

Self-contained and offline: styles inline, charts inline SVG, plots as data: URIs, no script;
a Content-Security-Policy forbids anything else (no remote resource can load, no script can
run). Every model-derived string is escaped (markup.esc).
"""

from __future__ import annotations

import json
from pathlib import Path

from trimtab._io import atomic_write_text
from trimtab.errors import TrimtabError
from trimtab.report import folder, sections
from trimtab.report.markup import esc, section
from trimtab.report.summary import Summary

REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1.5em;color:#222;line-height:1.4}
nav{font-size:.95em;margin:.5em 0 1.5em}nav a{margin-right:.9em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;vertical-align:top}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:bold;padding:.3em 0}
table.lint td,table.lint th,table.text td,table.text th{text-align:left}table.candidates td{white-space:nowrap}
table.layers :is(td,th):nth-child(-n+3),table.search :is(td,th):nth-child(-n+3),
table.search :is(td,th):last-child{text-align:left}
tr.chosen{background:#e8f6e8;font-weight:bold}tr.over{color:#a33}tr.origin{background:#fff4e0}
tr.sev-error td:first-child{color:#b00;font-weight:bold}tr.sev-warning td:first-child{color:#a60}
.reason{font-size:1.1em;padding:.6em;background:#f6f8fa;border-left:4px solid #2a7}
.warn{padding:.4em .8em;background:#fff6e5;border-left:4px solid #e0a030;margin:.6em 0}
p.warn{color:#8a5300}.muted{color:#666}
dl{display:grid;grid-template-columns:max-content auto;gap:.25em 1em}dt{font-weight:bold}dd{margin:0}
code{background:#f3f3f3;padding:0 .2em;word-break:break-all}pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}svg{max-width:100%;height:auto}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots figure{margin:0;max-width:48%}.plots img{max-width:100%;border:1px solid #ddd}
section{margin-top:2em}.scroll{overflow-x:auto;max-width:100%}
"""


def render_report(summary: Summary, run_dir: str | Path | None = None) -> str:
    """The page for `summary`; with `run_dir`, also the sensitivity chart, layer diff,
    calibration diagnostics, lint findings and plan read from that folder."""
    run_dir = Path(run_dir) if run_dir is not None else None
    parts = _sections(summary, run_dir)
    nav = " ".join(f'<a href="#{esc(anchor)}">{esc(title)}</a>' for anchor, title, _ in parts)
    body = "\n".join(section(anchor, title, html) for anchor, title, html in parts)
    name = Path(str((summary.model or {}).get("path", "model"))).name
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>trimtab: {esc(name)}</title>
<style>{_STYLE}</style></head><body>
<h1>trimtab report: {esc(name)}</h1>
{folder.guarded("the overview", lambda: sections.overview(summary))}
<nav>{nav}</nav>
{body}
</body></html>
"""


def _sections(summary: Summary, run_dir: Path | None) -> list[tuple[str, str, str]]:
    """(anchor, title, html) in page order; sections with nothing to show are left out."""
    guard = folder.guarded
    parts = [
        ("decision", "Decision", guard("the decision", lambda: sections.decision(summary))),
        ("pareto", "Accuracy vs throughput", guard("the Pareto plot", lambda: sections.pareto(summary))),
        ("candidates", "Candidates", guard("the candidates table", lambda: sections.candidates(summary))),
        ("layer-precisions", "Precision each layer ran in", guard("the layer precisions", lambda: sections.layer_precisions(summary))),
        ("search", "Mixed-precision search", guard("the search", lambda: sections.search(summary))),
        ("scenario", "Scenario", guard("the scenario", lambda: sections.scenario(summary))),
        ("notes", "Notes", guard("the notes", lambda: sections.notes(summary))),
    ]
    if run_dir is not None:
        parts += [
            ("sensitivity", "Per-layer sensitivity", folder.sensitivity(run_dir)),
            ("layers", "Layer diff", folder.layers(run_dir)),
            ("calibration", "Calibration", folder.calibration(run_dir)),
            ("lint", "Risk lint", folder.lint(run_dir)),
            ("plan", "Plan", folder.plan(run_dir)),
        ]
    parts.append(("reproduce", "Reproduce", guard("the command", lambda: sections.reproduce(summary, run_dir))))
    return [(anchor, title, html) for anchor, title, html in parts if html]


def write_report(summary: Summary, path: str | Path) -> Path:
    """Write the page to `path`, reading the optional files of the folder that holds it."""
    path = Path(path)
    return atomic_write_text(path, render_report(summary, path.parent))


def load_run_summary(run_dir: str | Path) -> Summary:
    """The run folder's summary.json, or a `TrimtabError` saying what is wrong and what to do."""
    path = Path(run_dir) / SUMMARY_NAME
    if not Path(run_dir).is_dir():
        found = "is not a folder" if Path(run_dir).exists() else "does not exist"
        raise TrimtabError(f"run folder '{run_dir}' {found}",
                           hint="pass the folder `trimtab tune --out` wrote (it holds summary.json)")
    if not path.is_file():
        raise TrimtabError(f"no {SUMMARY_NAME} in '{run_dir}'",
                           hint="pass the folder `trimtab tune --out` wrote; an interrupted run has none, run tune again")
    try:
        return Summary.load(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        kind = "not valid JSON" if isinstance(exc, json.JSONDecodeError) else "not a trimtab summary"
        raise TrimtabError(f"cannot read '{path}': {kind} ({type(exc).__name__}: {exc})",
                           hint="the file is damaged or from another tool; run `trimtab tune` again to rewrite it") from exc


def render_run_folder(run_dir: str | Path) -> str:
    """The page for a finished run, from its saved files alone."""
    return render_report(load_run_summary(run_dir), run_dir)


def write_report_for_run(run_dir: str | Path) -> Path:
    """Re-render run_dir/report.html from the saved files (no model, no re-runs)."""
    return atomic_write_text(Path(run_dir) / REPORT_NAME, render_run_folder(run_dir))
