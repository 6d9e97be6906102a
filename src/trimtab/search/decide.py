"""decide: the accuracy budget test and the choice of the fastest candidate within it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CandidateScore:
    """What the decision needs to know about one measured candidate."""

    name: str
    precision: str
    drop_points: float  # metric drop vs fp32 in points (100 x fraction); negative = better
    throughput_per_s: float
    ci95: tuple[float, float] | None = None  # of the drop, in points
    speedup: float | None = None  # vs the baseline, median of per-round ratios (interleaved timing)


def within_budget(drop_points: float, budget_points: float) -> bool:
    """The budget test: a candidate passes when its point estimate of the drop is at most the
    budget. (A small epsilon absorbs float noise in metrics computed as fractions.)"""
    return drop_points <= budget_points + 1e-9


def choose(candidates: list[CandidateScore], budget_points: float, baseline: str = "fp32") -> tuple[str, str]:
    """Return (chosen name, one-sentence reason): the highest-throughput candidate within budget.

    The baseline is always within budget (drop 0), so there is always an answer.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    passing = [c for c in candidates if within_budget(c.drop_points, budget_points)]
    if not passing:
        passing = [c for c in candidates if c.name == baseline] or candidates[:1]
    best = max(passing, key=lambda c: c.throughput_per_s)
    base = next((c for c in candidates if c.name == baseline), None)
    return best.name, _reason(best, base, candidates, budget_points)


def _reason(best: CandidateScore, base: CandidateScore | None, all_: list[CandidateScore], budget: float) -> str:
    rejected_faster = [
        c for c in all_ if c.throughput_per_s > best.throughput_per_s and not within_budget(c.drop_points, budget)
    ]
    speed = ""
    if base is not None and base.throughput_per_s > 0 and best.name != base.name:
        ratio = best.speedup if best.speedup else best.throughput_per_s / base.throughput_per_s
        speed = f" at {ratio:.2f}x the fp32 throughput"
    sentence = (
        f"{best.name} is the fastest candidate within the {budget:g}-point budget"
        f" (drop {best.drop_points:+.2f} points{_ci_text(best.ci95)}){speed}"
    )
    if rejected_faster:
        faster = max(rejected_faster, key=lambda c: c.throughput_per_s)
        sentence += f"; the faster {faster.name} drops {faster.drop_points:.2f} points, over the budget"
    return sentence + "."


def _ci_text(ci95: tuple[float, float] | None) -> str:
    if ci95 is None:
        return ""
    return f", 95% CI [{ci95[0]:+.2f}, {ci95[1]:+.2f}]"
