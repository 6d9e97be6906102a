"""Deployment scenarios: documented presets over the same machinery (objective, batch, budget,
decision rule, favoured precision). `trimtab tune --scenario NAME`; options given explicitly on
the command line override the preset's.

    surveillance  many video streams on one server: throughput at a large batch, memory
                  footprint reported, int8 favoured (it carries 2-4x the streams per machine)
    edge          one camera on a Jetson-class board: batch-1 latency; fp16 favoured unless int8
                  is clearly faster (1.2x), since fp16 needs no calibration data and no
                  validation of quantization error; without --calib only fp32/fp16 are built
    recsys        a ranking transformer behind an online service: batch-1 p99 latency under a
                  10 ms SLO; fp16 first, int8 only when clearly faster; the sensitivity ranking
                  tries attention and feed-forward MatMuls first (where transformer int8 error lives)
    medical       a diagnostic model: a 0.1-point budget judged strictly (the 95% interval's
                  upper bound), so int8 is chosen only when the data prove it harmless
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trimtab.errors import TrimtabError
from trimtab.options import DecisionRule, Objective


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    objective: Objective
    batch_size: int
    budget: float  # points
    decision: DecisionRule
    favour: tuple[str, float] | None = None
    latency_slo_ms: float | None = None
    measure_memory: bool = True
    needs_calibration: bool = True  # False: fp32/fp16 only when no calibration data is given
    focus_ops: tuple[str, ...] = ()  # op types the sensitivity ranking tries first

    def config_fields(self) -> dict[str, Any]:
        """TuneConfig fields this preset sets."""
        return {"objective": self.objective, "batch_size": self.batch_size, "budget": self.budget,
                "decision": self.decision, "favour": self.favour, "latency_slo_ms": self.latency_slo_ms,
                "measure_memory": self.measure_memory, "require_calibration": self.needs_calibration,
                "focus_ops": self.focus_ops, "scenario": self.name}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(objective=self.objective.value, decision=self.decision.value, rule=self.decision.value,
                    favour=list(self.favour) if self.favour else None,
                    focus_ops=list(self.focus_ops))
        return data


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("surveillance", "Many video streams per server: throughput at batch 32, memory reported, int8 "
                 "favoured (fp32/fp16 must be 1.1x faster to win).",
                 Objective.THROUGHPUT, 32, 1.0, DecisionRule.POINT, favour=("int8", 1.1)),
        Scenario("edge", "Jetson-class device, one stream: batch-1 median latency; fp16 favoured unless int8 is "
                 "1.2x faster; fp16 needs no calibration data.",
                 Objective.LATENCY, 1, 1.0, DecisionRule.POINT, favour=("fp16", 1.2), needs_calibration=False),
        Scenario("recsys", "Transformer ranking behind a service: batch-1 p99 latency within a 10 ms SLO; fp16 "
                 "first, int8 when 1.2x faster; attention and FFN MatMuls are ranked first.",
                 Objective.P99, 1, 1.0, DecisionRule.POINT, favour=("fp16", 1.2), latency_slo_ms=10.0,
                 focus_ops=("MatMul", "Gemm")),
        Scenario("medical", "Diagnostic use: 0.1-point budget, judged on the 95% interval's upper bound; int8 only "
                 "when the data prove it.",
                 Objective.THROUGHPUT, 8, 0.1, DecisionRule.STRICT),
    )
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise TrimtabError(f"unknown scenario {name!r}",
                           hint=f"choose one of: {', '.join(SCENARIOS)} (`trimtab tune --help` describes them)") from None
