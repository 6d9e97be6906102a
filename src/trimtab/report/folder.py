"""Sections of report.html rendered from the optional files of a run folder (explain/run.py):

    sensitivity.json              bar chart of the best node groups by gain
    layers.json                   the origin of the error and the worst nodes
    calibration/diagnostics.json  the worst tensors;  calibration/plots/*.png  their histograms
    calibration/coverage.json     coverage warnings
    lint.json                     risk lint findings
    plan.json                     the chosen precision plan

Each file is optional: a missing one gives a short note, and one that cannot be read or
rendered (corrupt, truncated, another format version) gives a note saying so; neither stops the
page. Files are read with the loaders of the modules that wrote them.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path

from trimtab.report.charts import Bar, bar_chart_svg
from trimtab.report.markup import bullet_list, esc, names_cell, note, num, table

log = logging.getLogger(__name__)

TOP_GROUPS = 15
WORST_NODES = 10
WORST_TENSORS = 8
MAX_PLOTS = 12
MAX_PLOT_BYTES = 4_000_000
MAX_FINDINGS = 60
MAX_RULES = 40
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GAIN_UNITS = {
    "sqnr": "gain over all-int8: output SQNR, dB (higher is better)",
    "kl": "gain over all-int8: reduction of the KL divergence from fp32, nats",
    "top1": "gain over all-int8: reduction of the top-1 disagreement with fp32 (share of samples)",
}


def guarded(label: str, render: Callable[[], str]) -> str:
    """`render()`, or a note naming `label` when it raises: a report is never lost to one bad input."""
    try:
        return render()
    except Exception as exc:  # noqa: BLE001 - any failure of an optional part becomes a note
        log.warning("report: %s skipped (%s: %s)", label, type(exc).__name__, exc)
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        return note(f"{label} could not be read or shown ({type(exc).__name__}: {message}); skipped.", "warn")


def _part(run_dir: Path, rel: str, render: Callable[[Path], str], missing: str) -> str:
    path = run_dir / rel
    if not path.is_file():
        return note(missing)
    return guarded(rel, lambda: render(path))


# --- sensitivity.json ----------------------------------------------------------------------------
def sensitivity(run_dir: Path) -> str:
    return _part(run_dir, "sensitivity.json", _sensitivity,
                 "No sensitivity.json in the run folder: it is written only when the most accurate int8 "
                 "candidate misses the budget.")


def _sensitivity(path: Path) -> str:
    from trimtab.explain.sensitivity import SensitivityResult

    result = SensitivityResult.load(path)
    rows = sorted(result.rows, key=lambda row: row.rank)[:TOP_GROUPS]
    head = (f"<p>Proxy <code>{esc(result.proxy)}</code> on the {len(result.samples)} worst of "
            f"{esc(result.dataset_size)} validation samples ({esc(result.flavour)} build, {esc(result.mode)} ranking, "
            f"{num(result.seconds, '.1f')} s): all-int8 scores {num(result.base_proxy, '.4g')}. Each bar is what "
            "returning that group of nodes to fp32 wins back.")
    if result.conditional:
        head += (f" The first {esc(result.conditional)} rows were chosen conditionally: their gain is cumulative "
                 "(that group and every row above it in fp32).")
    head += "</p>"
    if result.unranked:
        head += note(f"{len(result.unranked)} group(s) were not ranked within the {result.time_budget_s:g} s budget.")
    if not rows:
        return head + note("No group was ranked.")
    bars = [Bar(", ".join(row.group.nodes) or row.group.group, row.gain,
                f"rank {row.rank}, group {row.group.group}: {', '.join(row.group.nodes)}; proxy {num(row.proxy)}, "
                f"gain {num(row.gain)}") for row in rows]
    svg = bar_chart_svg(bars, value_label=GAIN_UNITS.get(result.proxy, "gain over all-int8"))
    cells = [[esc(row.rank), names_cell(row.group.nodes, 4), esc(", ".join(dict.fromkeys(row.group.op_types))),
              num(row.proxy, ".4g"), num(row.gain, ".4g")] for row in rows]
    return (f'{head}<figure class="chart">{svg}<figcaption>The {len(rows)} best-ranked node groups '
            f"(of {len(result.rows)} ranked).</figcaption></figure>"
            "<details><summary>The same as a table</summary>"
            + table(["rank", "nodes", "ops", "proxy", "gain"], cells) + "</details>")


# --- layers.json ---------------------------------------------------------------------------------
def layers(run_dir: Path) -> str:
    return _part(run_dir, "layers.json", _layers, "No layers.json in the run folder (no int8 candidate to compare).")


def _layers(path: Path) -> str:
    from trimtab.explain.compare import CompareResult

    result = CompareResult.load(path)
    origin = (f"Error is first introduced at <code>{esc(result.origin)}</code> ({esc(result.origin_reason)})."
              if result.origin else f"No origin found ({esc(result.origin_reason)}).")
    parts = [f"<p><code>{esc(result.candidate)}</code> against <code>{esc(result.reference)}</code> on "
             f"{esc(result.n_samples)} samples ({esc(result.numerics)}). {origin}</p>"]
    if result.capture_changes_outputs:
        parts.append(note(f"Capturing intermediate tensors changed the final outputs (relative max diff "
                          f"{num(result.capture_max_diff, '.3g')}): the figures may not describe the plain run.",
                          "warn"))
    worst = result.worst(WORST_NODES)
    origin_rows = [row for row in result.rows_for(result.origin or "") if all(row is not w for w in worst)]
    shown = worst + origin_rows
    cells = [[f"<code>{esc(row.node)}</code>", esc(row.op_type), f"<code>{esc(row.tensor)}</code>",
              num(row.accumulated.sqnr_db, ".1f"), num(row.local.sqnr_db, ".1f") if row.local else "\u2013",
              num(row.accumulated.cosine, ".5f"), num(row.accumulated.max_abs, ".3g")] for row in shown]
    classes = ["origin" if row.node == result.origin else "" for row in shown]
    parts.append(table(["node", "op", "tensor", "accumulated SQNR dB", "local SQNR dB", "cosine", "max abs"], cells,
                       row_classes=classes, cls="layers", caption=f"The {len(worst)} nodes with the lowest accumulated SQNR"
                       + (" and the origin" if origin_rows else "")
                       + (" (the origin highlighted)" if any(classes) else "")))
    return "\n".join(parts)


# --- calibration ---------------------------------------------------------------------------------
def calibration(run_dir: Path) -> str:
    diag = {}

    def render_diagnostics(path: Path) -> str:
        from trimtab.explain.diagnostics import CalibrationDiagnostics

        diag["value"] = CalibrationDiagnostics.load(path)
        return _diagnostics(diag["value"])

    parts = [
        "<h3>Coverage</h3>",
        _part(run_dir, "calibration/coverage.json", _coverage, "No calibration/coverage.json in the run folder."),
        "<h3>Worst tensors</h3>",
        _part(run_dir, "calibration/diagnostics.json", render_diagnostics,
              "No calibration/diagnostics.json in the run folder."),
        "<h3>Histograms of the worst tensors</h3>",
        guarded("calibration/plots", lambda: _plots(run_dir, diag.get("value"))),
    ]
    return "\n".join(parts)


def _diagnostics(diag) -> str:
    worst = diag.worst(WORST_TENSORS)
    methods = list(diag.methods)
    cells = []
    for t in worst:
        clip_method = max(t.clipped, key=t.clipped.get) if t.clipped else None
        clipped = f"{num(100 * t.clipped[clip_method], '.3g')}% ({esc(clip_method)})" if clip_method else "\u2013"
        cells.append([f"<code>{esc(t.name)}</code>", num(t.badness, ".3g"), num(t.spread_bits, ".2f"), clipped,
                      num(100 * t.dead.get("minmax", math.nan), ".3g", "%"), num(t.observed_amax, ".4g")]
                     + [num(t.amax.get(m), ".4g") for m in methods])
    headers = ["tensor", "badness", "spread bits", "most clipped", "dead at minmax", "max |x|"] + \
              [f"amax {m}" for m in methods]
    return (f"<p>{len(diag.tensors)} calibrated tensors from {esc(diag.num_samples)} samples; badness = spread + "
            "dead share at minmax + 100 x the largest clipped share (0 is fine, 1 is worth a look).</p>"
            + table(headers, cells))


def _plots(run_dir: Path, diag) -> str:
    folder = run_dir / "calibration" / "plots"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        return note("No histogram plots in calibration/plots/ (they need matplotlib when the run is made).")
    names = _plot_names(files, diag)
    figures, skipped = [], []
    for path in files[:MAX_PLOTS]:
        data = path.read_bytes() if path.stat().st_size <= MAX_PLOT_BYTES else b""
        if not data.startswith(PNG_SIGNATURE):
            skipped.append(path.name)
            continue
        caption = names.get(path.name, path.name)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        figures.append(f'<figure class="plot"><img src="{uri}" alt="histogram of {esc(caption)}">'
                       f"<figcaption><code>{esc(caption)}</code></figcaption></figure>")
    parts = ['<div class="plots">' + "".join(figures) + "</div>"]
    if skipped:
        parts.append(note(f"Not a PNG (or too large), skipped: {', '.join(skipped)}.", "warn"))
    if len(files) > MAX_PLOTS:
        parts.append(note(f"{len(files) - MAX_PLOTS} more plot(s) in calibration/plots/."))
    return "\n".join(parts)


def _plot_names(files: list[Path], diag) -> dict[str, str]:
    """File name -> tensor name: `NN-<slug>.png` is the NN-th worst tensor (diagnostics.py)."""
    if diag is None:
        return {}
    from trimtab.explain.diagnostics import slug

    worst = diag.worst(len(files) + 99)
    names = {}
    for path in files:
        match = re.fullmatch(r"(\d+)-(.*)\.png", path.name)
        if match and 0 < int(match.group(1)) <= len(worst):
            tensor = worst[int(match.group(1)) - 1]
            if slug(tensor.name) == match.group(2):
                names[path.name] = tensor.name
    return names


def _coverage(path: Path) -> str:
    from trimtab.explain.coverage import CoverageResult

    result = CoverageResult.load(path)
    parts = [f"<p>{esc(result.calibration_samples)} calibration and {esc(result.validation_samples)} validation "
             "samples compared.</p>"]
    if result.warnings:
        parts.append('<div class="warn"><b>Coverage warnings</b>' + bullet_list(result.warnings) + "</div>")
    else:
        parts.append("<p>No coverage warning: the calibration data covers the validation data.</p>")
    uncovered = result.uncovered()[:5]
    if uncovered:
        cells = [[f"<code>{esc(layer.name)}</code>", num(layer.calibrated_amax, ".4g"),
                  num(layer.validation_amax, ".4g"), num(100 * layer.outside, ".3g", "%"),
                  num(100 * layer.excess, ".3g", "%")] for layer in uncovered]
        parts.append(table(["layer", "calibrated amax", "validation amax", "outside", "excess"], cells,
                           caption=f"Layers outside their calibrated range (limit {100 * result.layer_limit:.3g}%)"))
    return "\n".join(parts)


# --- lint.json -----------------------------------------------------------------------------------
def lint(run_dir: Path) -> str:
    return _part(run_dir, "lint.json", _lint, "No lint.json in the run folder.")


def _lint(path: Path) -> str:
    from trimtab.explain.lint import load_findings

    findings = load_findings(path)
    if not findings:
        return "<p>No finding: the risk lint found nothing to flag.</p>"
    counts = {}
    for finding in findings:
        counts[finding.severity.value] = counts.get(finding.severity.value, 0) + 1
    cells, classes = [], []
    for f in findings[:MAX_FINDINGS]:
        evidence = "; ".join(f"{k}={_evidence(v)}" for k, v in f.evidence.items())
        where = " / ".join(f"<code>{esc(x)}</code>" for x in (f.node, f.tensor) if x) or "\u2013"
        cells.append([esc(f.severity.value), esc(f.rule.value), where, esc(evidence), esc(f.message), esc(f.action)])
        classes.append(f"sev-{f.severity.value}")
    summary = ", ".join(f"{n} {esc(sev)}" for sev, n in sorted(counts.items()))
    parts = [f"<p>{len(findings)} finding(s): {summary}.</p>",
             table(["severity", "rule", "node / tensor", "evidence", "finding", "suggested action"], cells,
                   row_classes=classes, cls="lint")]
    if len(findings) > MAX_FINDINGS:
        parts.append(note(f"{len(findings) - MAX_FINDINGS} more finding(s) in lint.json."))
    return "\n".join(parts)


def _evidence(value) -> str:
    if isinstance(value, float):
        return num(value, ".4g")
    if isinstance(value, list):
        return "[" + ", ".join(_evidence(v) for v in value[:8]) + (", ..." if len(value) > 8 else "") + "]"
    return str(value)


# --- plan.json -----------------------------------------------------------------------------------
def plan(run_dir: Path) -> str:
    return _part(run_dir, "plan.json", _plan, "No plan.json in the run folder.")


def _plan(path: Path) -> str:
    from trimtab.build.plan import PrecisionPlan

    data = json.loads(path.read_text(encoding="utf-8"))
    plan = PrecisionPlan.from_dict(data)  # validates
    text = json.dumps(data, indent=2)
    parts = [f"<p>Default precision <b>{esc(plan.default.value)}</b>, {len(plan.rules)} per-node exception(s) "
             "(<code>plan.json</code>).</p>"]
    if plan.rules:
        cells = [[esc(rule.kind.value), f"<code>{esc(rule.value)}</code>", esc(rule.precision.value)]
                 for rule in plan.rules[:MAX_RULES]]
        parts.append(table(["match", "value", "precision"], cells, cls="text"))
        if len(plan.rules) > MAX_RULES:
            parts.append(note(f"{len(plan.rules) - MAX_RULES} more rule(s) in plan.json."))
    parts.append(f"<details><summary>plan.json as written</summary><pre>{esc(text)}</pre></details>")
    return "\n".join(parts)
