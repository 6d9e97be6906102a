from trimtab.search import CandidateScore, choose, decide, passes, within_budget


def _c(name, drop, speed):
    return CandidateScore(name=name, precision=name.split("-")[0], drop_points=drop, throughput_per_s=speed)


def test_budget_test_is_inclusive_and_absolute():
    assert within_budget(1.0, 1.0)
    assert within_budget(-0.5, 0.0)
    assert not within_budget(1.01, 1.0)


def test_fastest_within_budget_wins():
    candidates = [_c("fp32", 0.0, 100), _c("fp16", 0.0, 80), _c("int8-minmax", 0.4, 300), _c("int8-entropy", 0.2, 290)]
    chosen, reason = choose(candidates, budget_points=1.0)
    assert chosen == "int8-minmax"
    assert "3.00x" in reason


def test_faster_candidate_over_budget_is_rejected_and_named():
    candidates = [_c("fp32", 0.0, 100), _c("int8-minmax", 2.5, 300), _c("int8-entropy", 0.5, 250)]
    chosen, reason = choose(candidates, budget_points=1.0)
    assert chosen == "int8-entropy"
    assert "int8-minmax" in reason and "over the budget" in reason


def test_fp32_when_nothing_else_fits():
    candidates = [_c("fp32", 0.0, 100), _c("fp16", 0.0, 60), _c("int8-minmax", 5.0, 300)]
    chosen, _ = choose(candidates, budget_points=1.0)
    assert chosen == "fp32"


def _s(name, drop, speed, ci=None, n=None, p50=None, p99=None):
    latency = {"p50": p50, "p99": p99} if p50 is not None else None
    return CandidateScore(name=name, precision=name.split("-")[0], drop_points=drop, throughput_per_s=speed,
                          ci95=ci, n_samples=n, latency_ms=latency)


def test_point_rule_accepts_a_wide_interval_but_warns_with_the_samples_needed():
    candidates = [_s("fp32", 0.0, 100), _s("int8-mse", 0.5, 300, ci=(-0.5, 1.5), n=400)]
    decision = decide(candidates, 1.0)
    assert decision.chosen == "int8-mse" and decision.rule == "point"
    # upper half-width 1.0 must shrink to 0.5: (1.0 / 0.5)^2 = 4 x the samples
    assert decision.samples_needed == 1600
    assert "1600" in decision.warnings[0] and "strict" in decision.warnings[0]


def test_strict_rule_needs_the_upper_bound_within_the_budget():
    candidates = [_s("fp32", 0.0, 100), _s("int8-mse", 0.5, 300, ci=(-0.5, 1.5), n=400),
                  _s("int8-minmax", 0.2, 250, ci=(0.0, 0.9), n=400)]
    decision = decide(candidates, 1.0, rule="strict")
    assert decision.chosen == "int8-minmax" and not decision.warnings
    assert "int8-mse is rejected: its interval reaches 1.50" in decision.reason
    assert passes(candidates[1], 1.0, "point") and not passes(candidates[1], 1.0, "strict")


def test_recommends_fp32_and_qat_when_no_int8_plan_fits_on_a_cpu_where_fp16_is_slow():
    candidates = [_s("fp32", 0.0, 100), _s("fp16", 0.0, 60), _s("int8-minmax", 5.0, 300), _s("mixed-minmax", 1.4, 200)]
    decision = decide(candidates, 1.0)
    assert decision.chosen == "fp32"
    rec = decision.recommendation
    assert rec["precision"] == "fp32" and rec["qat"]
    assert "mixed-minmax" in rec["why"] and "+1.40" in rec["why"] and "0.60x" in rec["why"]


def test_recommends_fp16_where_it_is_faster_and_qat_beyond_three_points_even_within_budget():
    candidates = [_s("fp32", 0.0, 100), _s("fp16", 0.0, 180), _s("int8-minmax", 3.5, 300)]
    decision = decide(candidates, 5.0)
    assert decision.chosen == "int8-minmax"  # within the user's budget, still chosen
    assert decision.recommendation["precision"] == "fp16" and "more than 3 points" in decision.recommendation["why"]
    assert decide(candidates[:2] + [_s("int8-minmax", 0.3, 300)], 1.0).recommendation is None


def test_latency_objective_slo_and_favoured_precision():
    candidates = [_s("fp32", 0.0, 100, p50=10.0, p99=12.0), _s("fp16", 0.0, 150, p50=6.0, p99=7.0),
                  _s("int8-mse", 0.2, 190, p50=5.5, p99=11.0)]
    assert decide(candidates, 1.0, objective="latency").chosen == "int8-mse"
    assert decide(candidates, 1.0, objective="latency", latency_slo_ms=10.0).chosen == "fp16"  # p99 11 > 10
    # int8 is 6.0 / 5.5 = 1.09x faster than the favoured fp16: not clearly enough at a 1.2x margin
    assert decide(candidates, 1.0, objective="latency", favour=("fp16", 1.2)).chosen == "fp16"
    assert decide(candidates, 1.0, objective="latency", favour=("fp16", 1.05)).chosen == "int8-mse"


def test_a_mixed_plan_within_budget_but_slower_than_fp32_still_triggers_the_recommendation():
    candidates = [_s("fp32", 0.0, 100), _s("fp16", 0.0, 60), _s("int8-mse", 10.2, 200), _s("mixed-mse", 0.8, 89)]
    decision = decide(candidates, 2.0)
    assert decision.chosen == "fp32"
    assert decision.recommendation["precision"] == "fp32" and "faster than fp32" in decision.recommendation["why"]
