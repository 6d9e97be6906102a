"""PrecisionPlan: which precision each node of a graph gets, as data.

A plan is a default precision plus an ordered list of rules. A rule matches a node by its exact
name, by a regular expression over its name (full match), or by its op type. Resolution:

1. an exact-name rule wins over everything else (the last one for a name, so a later, more
   specific decision by the search overrides an earlier one);
2. otherwise the first pattern or op-type rule in list order that matches;
3. otherwise the default.

Plans round-trip through JSON-ready dicts:
``{"default": "int8", "rules": [{"name": "conv1", "precision": "fp32"},
{"pattern": "^layer4\\..*", "precision": "fp16"}, {"op_type": "Softmax", "precision": "fp32"}]}``
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from trimtab.options import Precision


class MatchKind(StrEnum):
    NAME = "name"  # exact node name
    PATTERN = "pattern"  # regular expression, full match on the node name
    OP_TYPE = "op_type"  # exact ONNX op type


@dataclass(frozen=True)
class PlanRule:
    kind: MatchKind
    value: str
    precision: Precision

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _parse_enum(MatchKind, self.kind, "rule kind"))
        object.__setattr__(self, "precision", _parse_enum(Precision, self.precision, "precision"))
        if not isinstance(self.value, str) or not self.value:
            raise ValueError(f"a {self.kind} rule needs a non-empty string, got {self.value!r}")
        if self.kind is MatchKind.PATTERN:
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {self.value!r}: {exc}") from exc

    def matches(self, node_name: str, op_type: str) -> bool:
        if self.kind is MatchKind.NAME:
            return node_name == self.value
        if self.kind is MatchKind.OP_TYPE:
            return op_type == self.value
        return re.fullmatch(self.value, node_name) is not None

    def to_dict(self) -> dict:
        return {self.kind.value: self.value, "precision": self.precision.value}

    @classmethod
    def from_dict(cls, data: dict) -> PlanRule:
        if not isinstance(data, dict) or "precision" not in data:
            raise ValueError(f"a rule is a dict with 'precision' and one of name/pattern/op_type, got {data!r}")
        kinds = [kind for kind in MatchKind if kind.value in data]
        if len(kinds) != 1:
            raise ValueError(f"a rule needs exactly one of name/pattern/op_type, got keys {sorted(data)}")
        return cls(kinds[0], data[kinds[0].value], data["precision"])


@dataclass(frozen=True)
class PrecisionPlan:
    default: Precision = Precision.FP32
    rules: tuple[PlanRule, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", _parse_enum(Precision, self.default, "default precision"))
        rules = tuple(self.rules)
        if not all(isinstance(rule, PlanRule) for rule in rules):
            raise ValueError("rules must be PlanRule objects (use PrecisionPlan.from_dict for dicts)")
        object.__setattr__(self, "rules", rules)

    @classmethod
    def uniform(cls, precision: Precision | str) -> PrecisionPlan:
        return cls(default=precision)

    def precision_for(self, node_name: str, op_type: str = "") -> Precision:
        exact = [rule for rule in self.rules if rule.kind is MatchKind.NAME and rule.value == node_name]
        if exact:
            return exact[-1].precision
        for rule in self.rules:
            if rule.kind is not MatchKind.NAME and rule.matches(node_name, op_type):
                return rule.precision
        return self.default

    def with_rule(self, kind: MatchKind | str, value: str, precision: Precision | str) -> PrecisionPlan:
        """A copy with one more rule appended (plans are immutable)."""
        return PrecisionPlan(self.default, self.rules + (PlanRule(kind, value, precision),))

    def to_dict(self) -> dict:
        return {"default": self.default.value, "rules": [rule.to_dict() for rule in self.rules]}

    @classmethod
    def from_dict(cls, data: dict) -> PrecisionPlan:
        if not isinstance(data, dict) or "default" not in data:
            raise ValueError(f"a plan is a dict with 'default' and 'rules', got {data!r}")
        unknown = set(data) - {"default", "rules"}
        if unknown:
            raise ValueError(f"unknown plan keys {sorted(unknown)}; expected 'default' and 'rules'")
        return cls(data["default"], tuple(PlanRule.from_dict(rule) for rule in data.get("rules", [])))


def _parse_enum(enum_type, value, what: str):
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum_type)
        raise ValueError(f"unknown {what} {value!r}; choose one of: {choices}") from None
