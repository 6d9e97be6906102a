"""summary.json: the run's contract with users and tests (keys documented in DESIGN.md)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trimtab._io import atomic_write_json

SCHEMA_VERSION = 1


@dataclass
class CandidateSummary:
    name: str
    precision: str
    metric_value: float
    metric_drop: float  # points (100 x fraction); negative means better than fp32
    metric_ci95: list[float]  # 95% interval of the drop, points
    throughput_per_s: float
    latency_ms: dict[str, float]  # p50, p90, p99 per batch
    batch_size: int
    model_bytes: int
    peak_mem_bytes: int | None
    artifact: str  # path relative to the run folder
    within_budget: bool
    speedup_vs_fp32: float | None = None  # median of per-round ratios, interleaved timing
    speedup_spread: list[float] | None = None  # p10..p90 of the per-round ratios
    calibration: str | None = None
    flavour: str | None = None
    p_value: float | None = None  # McNemar (paired classification)
    extras: dict[str, Any] = field(default_factory=dict)
    fallback_nodes: list[str] = field(default_factory=list)  # mixed plans: nodes returned to higher precision
    # layers whose kernel the backend chose when timed (gpu engine: int8 vs float per layer): name -> precision ran
    layer_precisions: dict[str, str] = field(default_factory=dict)


@dataclass
class Summary:
    trimtab_version: str
    model: dict[str, str]  # path, sha256
    target: dict[str, str]  # backend, device
    task: str
    metric: str
    budget: float
    baseline: dict[str, Any]  # name, metric_value
    candidates: list[CandidateSummary]
    chosen: str
    reason: str
    schema_version: int = SCHEMA_VERSION
    timings_s: dict[str, float] = field(default_factory=dict)
    command: str = ""
    notes: list[str] = field(default_factory=list)
    # How the choice was made (search/decide.py): rule ("point" or "strict"), warnings,
    # samples_needed, recommendation {precision, qat, why} or None.
    decision: dict[str, Any] = field(default_factory=dict)
    # The mixed-precision search (search/mixed.py): status, start, evaluations, reused,
    # seconds, steps [{plan, fallback_groups, fallback_nodes, metric_value, drop, ci95, within_budget, artifact}].
    search: dict[str, Any] = field(default_factory=dict)
    scenario: dict[str, Any] = field(default_factory=dict)  # name, description, objective, batch_size, budget, rule

    def candidate(self, name: str) -> CandidateSummary:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Summary":
        fields = dict(data)
        fields["candidates"] = [CandidateSummary(**c) for c in data["candidates"]]
        return cls(**fields)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Summary":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
