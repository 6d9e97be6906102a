"""decide: the accuracy budget test, the choice of the fastest candidate within it, and what
to recommend when nothing low-precision is good enough.

Rules (`DecisionRule`): `point` passes a candidate whose measured drop is within the budget and
warns when its 95% interval reaches past it, saying how many validation samples would confirm
it; `strict` passes only a candidate whose interval's upper bound is within the budget.

The article's rule: when no low-precision plan (int8 or mixed) meets the budget faster than fp32,
or the best of them still drops more than 3 points, recommend fp16 (fp32 where fp16 is slower, as on most CPUs)
and quantization-aware training, with the figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from trimtab.options import DecisionRule, Objective

QAT_DROP_POINTS = 3.0  # beyond this, post-training quantization is not the tool (the article's rule)
LOW_PRECISIONS = ("int8", "mixed")


@dataclass(frozen=True)
class CandidateScore:
    """What the decision needs to know about one measured candidate."""

    name: str
    precision: str
    drop_points: float  # metric drop vs fp32 in points (100 x fraction); negative = better
    throughput_per_s: float
    ci95: tuple[float, float] | None = None  # of the drop, in points
    speedup: float | None = None  # vs the baseline, median of per-round ratios (interleaved timing)
    latency_ms: dict[str, float] | None = None  # p50/p90/p99 per batch
    n_samples: int | None = None  # validation samples behind the drop


@dataclass
class Decision:
    chosen: str
    reason: str
    rule: str
    objective: str
    warnings: list[str] = field(default_factory=list)
    samples_needed: int | None = None
    recommendation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def within_budget(drop_points: float, budget_points: float) -> bool:
    """The budget test on a point estimate (a small epsilon absorbs float noise)."""
    return drop_points <= budget_points + 1e-9


def passes(candidate: CandidateScore, budget_points: float, rule: DecisionRule | str = DecisionRule.POINT) -> bool:
    if DecisionRule(rule) is DecisionRule.STRICT and candidate.ci95 is not None:
        return within_budget(max(candidate.drop_points, candidate.ci95[1]), budget_points)
    return within_budget(candidate.drop_points, budget_points)


def samples_to_confirm(candidate: CandidateScore, budget_points: float) -> int | None:
    """Validation samples needed for the interval's upper bound to fall within the budget, if
    the drop stays as measured (the interval narrows as 1/sqrt(n)). None when the point estimate
    itself is over the budget or the interval is unknown."""
    if candidate.ci95 is None or not candidate.n_samples or candidate.drop_points >= budget_points:
        return None
    upper = candidate.ci95[1] - candidate.drop_points
    if upper <= budget_points - candidate.drop_points:
        return candidate.n_samples
    return math.ceil(candidate.n_samples * (upper / (budget_points - candidate.drop_points)) ** 2)


def choose(candidates: list[CandidateScore], budget_points: float, baseline: str = "fp32") -> tuple[str, str]:
    """(chosen name, reason) under the default rule and objective; see `decide`."""
    decision = decide(candidates, budget_points, baseline=baseline)
    return decision.chosen, decision.reason


def decide(
    candidates: list[CandidateScore],
    budget_points: float,
    *,
    rule: DecisionRule | str = DecisionRule.POINT,
    objective: Objective | str = Objective.THROUGHPUT,
    baseline: str = "fp32",
    latency_slo_ms: float | None = None,
    favour: tuple[str, float] | None = None,
) -> Decision:
    """Choose the fastest candidate (by `objective`) that passes `rule` (and, with
    `latency_slo_ms`, whose p99 latency meets it). `favour` = (precision, margin): another
    precision must be `margin` times faster than the best passing candidate of that precision to
    be chosen over it. The baseline always passes, so there is always an answer."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    rule, objective = DecisionRule(rule), Objective(objective)
    base = next((c for c in candidates if c.name == baseline), None)
    passing = [c for c in candidates if passes(c, budget_points, rule) and _meets_slo(c, latency_slo_ms)]
    if not passing:
        passing = [base] if base is not None else candidates[:1]
    best = max(passing, key=lambda c: _speed(c, objective))
    if favour is not None:
        best = _apply_favour(best, passing, favour, objective)
    decision = Decision(best.name, _reason(best, base, candidates, budget_points, rule, objective, latency_slo_ms),
                        rule.value, objective.value)
    _add_warnings(decision, best, budget_points, rule)
    decision.recommendation = _recommendation(candidates, base, budget_points, rule, objective)
    return decision


def _speed(c: CandidateScore, objective: Objective) -> float:
    """Higher is faster."""
    if objective is Objective.THROUGHPUT or not c.latency_ms:
        return c.throughput_per_s
    key = "p50" if objective is Objective.LATENCY else "p99"
    latency = c.latency_ms.get(key)
    return -latency if latency is not None and math.isfinite(latency) else -math.inf


def _meets_slo(c: CandidateScore, slo_ms: float | None) -> bool:
    if slo_ms is None:
        return True
    p99 = (c.latency_ms or {}).get("p99")
    return p99 is not None and p99 <= slo_ms


def _apply_favour(best: CandidateScore, passing: list[CandidateScore], favour: tuple[str, float],
                  objective: Objective) -> CandidateScore:
    precision, margin = favour
    favoured = [c for c in passing if c.precision == precision]
    if not favoured or best.precision == precision:
        return best
    top = max(favoured, key=lambda c: _speed(c, objective))
    return best if _ratio(best, top, objective) >= margin else top


def _ratio(fast: CandidateScore, slow: CandidateScore, objective: Objective) -> float:
    """How many times faster `fast` is than `slow` under the objective."""
    a, b = _speed(fast, objective), _speed(slow, objective)
    if objective is Objective.THROUGHPUT or not fast.latency_ms:
        return a / b if b > 0 else math.inf
    return b / a if a < 0 and b < 0 else math.inf  # latencies are negated speeds


def _reason(best, base, all_, budget, rule, objective, slo) -> str:
    judged = "its 95% interval" if rule is DecisionRule.STRICT else "its measured drop"
    speed = ""
    if base is not None and best.name != base.name:
        speed = f" at {_ratio(best, base, objective):.2f}x the fp32 {_objective_words(objective)}"
        if objective is Objective.THROUGHPUT and best.speedup:
            speed = f" at {best.speedup:.2f}x the fp32 throughput"
    slo_text = f" and meeting the {slo:g} ms p99 latency target" if slo is not None else ""
    sentence = (f"{best.name} is the fastest candidate ({_objective_words(objective)}) with {judged} within the "
                f"{budget:g}-point budget{slo_text} (drop {best.drop_points:+.2f} points{_ci_text(best.ci95)}){speed}")
    faster = [c for c in all_ if _speed(c, objective) > _speed(best, objective) and not passes(c, budget, rule)]
    if faster:
        top = max(faster, key=lambda c: _speed(c, objective))
        over = "its interval reaches" if rule is DecisionRule.STRICT and within_budget(top.drop_points, budget) \
            else "it drops"
        upper = top.ci95[1] if over == "its interval reaches" else top.drop_points
        sentence += f"; the faster {top.name} is rejected: {over} {upper:.2f} points, over the budget"
    return sentence + "."


def _objective_words(objective: Objective) -> str:
    return {Objective.THROUGHPUT: "throughput", Objective.LATENCY: "median latency",
            Objective.P99: "p99 latency"}[objective]


def _add_warnings(decision: Decision, best: CandidateScore, budget: float, rule: DecisionRule) -> None:
    if rule is not DecisionRule.POINT or best.ci95 is None or within_budget(best.ci95[1], budget):
        return
    needed = samples_to_confirm(best, budget)
    decision.samples_needed = needed
    text = (f"{best.name}'s drop is within the budget as measured ({best.drop_points:+.2f} points), but its 95% "
            f"interval reaches {best.ci95[1]:+.2f} points, past the {budget:g}-point budget")
    if needed:
        text += f"; about {needed} validation samples (now {best.n_samples}) would confirm it if the drop holds"
    decision.warnings.append(text + ". `--decision strict` would not accept it.")


def _recommendation(candidates, base, budget, rule, objective) -> dict[str, Any] | None:
    low = [c for c in candidates if c.precision in LOW_PRECISIONS]
    if not low:
        return None
    # A plan that meets the budget but runs slower than fp32 (most of the model back in fp32) is no
    # answer either: int8 has not paid.
    good = [c for c in low if passes(c, budget, rule) and (base is None or _ratio(c, base, objective) > 1.0)]
    best_drop = min(c.drop_points for c in low)
    if good and best_drop <= QAT_DROP_POINTS:
        return None
    fp16 = next((c for c in candidates if c.precision == "fp16" and passes(c, budget, rule)), None)
    use_fp16 = fp16 is not None and base is not None and _ratio(fp16, base, objective) > 1.0
    precision = "fp16" if use_fp16 else "fp32"
    best = min(low, key=lambda c: c.drop_points)
    cause = ("no int8 or mixed plan meets the budget faster than fp32" if not good
             else f"the best low-precision plan still drops more than {QAT_DROP_POINTS:g} points")
    why = (f"{cause} (best: {best.name}, drop {best.drop_points:+.2f} points against a {budget:g}-point budget). "
           f"Deploy {precision}")
    if fp16 is not None and not use_fp16 and base is not None:
        why += f" (fp16 runs at {_ratio(fp16, base, objective):.2f}x fp32 here, so it does not pay)"
    why += ("; to go lower, quantization-aware training (fine-tuning with fake quantization) is the tool, "
            "starting from the layers ranked most sensitive.")
    return {"precision": precision, "qat": True, "why": why}


def _ci_text(ci95: tuple[float, float] | None) -> str:
    if ci95 is None:
        return ""
    return f", 95% CI [{ci95[0]:+.2f}, {ci95[1]:+.2f}]"
