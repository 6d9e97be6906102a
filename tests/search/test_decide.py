from trimtab.search import CandidateScore, choose, within_budget


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
