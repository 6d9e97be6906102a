import json

import pytest

from trimtab.build.plan import MatchKind, PlanRule, PrecisionPlan
from trimtab.options import Precision


def test_default_applies_when_nothing_matches():
    plan = PrecisionPlan("int8")
    assert plan.precision_for("conv1", "Conv") is Precision.INT8


def test_exact_name_beats_earlier_pattern():
    plan = PrecisionPlan("int8", (PlanRule("pattern", "conv.*", "fp16"), PlanRule("name", "conv1", "fp32")))
    assert plan.precision_for("conv1", "Conv") is Precision.FP32
    assert plan.precision_for("conv2", "Conv") is Precision.FP16


def test_first_matching_pattern_wins_and_patterns_fully_match():
    plan = PrecisionPlan("int8", (PlanRule("pattern", "layer4\\..*", "fp32"), PlanRule("pattern", "layer.*", "fp16")))
    assert plan.precision_for("layer4.conv", "Conv") is Precision.FP32
    assert plan.precision_for("layer3.conv", "Conv") is Precision.FP16
    assert plan.precision_for("xlayer4.conv", "Conv") is Precision.INT8  # full match, not search


def test_op_type_rule():
    plan = PrecisionPlan("int8").with_rule(MatchKind.OP_TYPE, "Softmax", "fp32")
    assert plan.precision_for("attn/softmax", "Softmax") is Precision.FP32
    assert plan.precision_for("attn/matmul", "MatMul") is Precision.INT8


def test_json_round_trip():
    plan = PrecisionPlan("int8", (PlanRule("name", "fc", "fp32"), PlanRule("pattern", "^b.*", "fp16"),
                                  PlanRule("op_type", "Softmax", "fp32")))
    text = json.dumps(plan.to_dict())
    assert PrecisionPlan.from_dict(json.loads(text)) == plan
    assert json.loads(text)["rules"][0] == {"name": "fc", "precision": "fp32"}


@pytest.mark.parametrize("bad", [
    {"default": "int4"},
    {"default": "int8", "rules": [{"name": "a", "precision": "bf13"}]},
    {"default": "int8", "rules": [{"pattern": "(", "precision": "fp32"}]},
    {"default": "int8", "rules": [{"name": "a", "pattern": "b", "precision": "fp32"}]},
    {"default": "int8", "rules": [{"name": "", "precision": "fp32"}]},
    {"default": "int8", "extra": 1},
])
def test_invalid_plans_raise_value_error(bad):
    with pytest.raises(ValueError):
        PrecisionPlan.from_dict(bad)
