"""The cheap explain pass `tune` runs on every model, saved in the run folder for the report:

    lint.json                     risk lint of the model and its activation histograms
    calibration/diagnostics.json  per tensor: the range each method picks, clipped and dead shares
    calibration/plots/*.png       histograms of the worst tensors (when matplotlib is installed)
    calibration/coverage.json     does the calibration data represent the validation data?
    layers.json                   layer-wise fp32 vs int8 diff (accumulated and local) of one int8 candidate
    sensitivity.json              (only when int8 misses the budget) which nodes, returned to fp32,
                                  win back the most, ranked on the worst validation samples

It reuses the histograms calibration already cached (no new pass over the calibration data); the
coverage check and the layer diff run on a small validation subset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

COVERAGE_SAMPLES = 128
COMPARE_SAMPLES = 16
SENSITIVITY_SECONDS = 30.0


@dataclass
class ExplainOutputs:
    """What the cheap explain pass wrote, and sentences worth putting in the summary's notes."""

    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def explain_run(model, calibration, validation, artifact, root: Path) -> ExplainOutputs:
    """Lint, calibration diagnostics, coverage and (for an int8 `artifact`) the layer diff."""
    from trimtab.calibrate.cache import load_histograms

    outputs = ExplainOutputs()
    hist = load_histograms(calibration.histograms_path, model.sha256, calibration.data_fingerprint)
    _lint(model, hist, calibration, root, outputs)
    _diagnostics(hist, root, outputs)
    _coverage(model, calibration, validation, root, outputs)
    if artifact is not None:
        _compare(model, artifact, validation, root, outputs)
    return outputs


def _lint(model, hist, calibration, root: Path, outputs: ExplainOutputs) -> None:
    from trimtab.explain.lint import Severity, lint, save_findings

    findings = lint(model, hist, ranges=calibration)
    save_findings(findings, root / "lint.json")
    outputs.files.append("lint.json")
    serious = [f for f in findings if f.at_least(Severity.WARNING)]
    if serious:
        outputs.notes.append(
            f"Risk lint: {len(serious)} finding(s) at warning or above (see lint.json), e.g. "
            f"{serious[0].rule.value} at {serious[0].node or serious[0].tensor}."
        )


def _diagnostics(hist, root: Path, outputs: ExplainOutputs) -> None:
    from trimtab.explain.diagnostics import calibration_diagnostics, plot_worst_histograms

    diag = calibration_diagnostics(hist)
    diag.save(root / "calibration" / "diagnostics.json")
    outputs.files.append("calibration/diagnostics.json")
    for path in plot_worst_histograms(diag, hist, root / "calibration" / "plots", n=6):
        outputs.files.append(str(Path(path).relative_to(root)))


def _coverage(model, calibration, validation, root: Path, outputs: ExplainOutputs) -> None:
    from trimtab.explain.coverage import coverage

    subset = validation.take(min(len(validation), COVERAGE_SAMPLES))
    result = coverage(model, calibration, subset)
    result.save(root / "calibration" / "coverage.json")
    outputs.files.append("calibration/coverage.json")
    outputs.notes.extend(f"Coverage: {warning}" for warning in result.warnings)


def _compare(model, artifact, validation, root: Path, outputs: ExplainOutputs) -> None:
    from trimtab.explain.compare import compare

    subset = validation.take(min(len(validation), COMPARE_SAMPLES))
    result = compare(model, artifact, subset, max_samples=COMPARE_SAMPLES)
    result.save(root / "layers.json")
    outputs.files.append("layers.json")
    origin = getattr(result, "origin", None)
    if origin:
        outputs.notes.append(f"Layer diff of {artifact.name}: error is first introduced at {origin} (layers.json).")


def sensitivity_run(model, calibration, validation, artifact, root: Path) -> ExplainOutputs:
    """Rank which node groups of `artifact`'s build, returned to fp32, recover the most, within a
    time budget."""
    from trimtab.build import Smoothing
    from trimtab.explain.sensitivity import rank_sensitivity

    outputs = ExplainOutputs()
    smoothing = Smoothing(calibration.channels) if artifact.notes.get("smoothed") else None
    result = rank_sensitivity(model, calibration.ranges, artifact.flavour, validation, calibration=calibration,
                              time_budget_s=SENSITIVITY_SECONDS, smoothing=smoothing)
    result.save(root / "sensitivity.json")
    outputs.files.append("sensitivity.json")
    top = result.top_nodes(3)
    if top:
        outputs.notes.append(
            f"Sensitivity: returning {', '.join(top[:6])}{' ...' if len(top) > 6 else ''} to fp32 wins back the "
            "most on the worst samples (sensitivity.json); quantization-aware training or a mixed plan starts there."
        )
    return outputs
