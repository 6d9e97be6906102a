"""tune's search stage on a small planted chain: a verified mixed plan, resume, limits, scenarios."""

import json

import pytest

import trimtab
from tests.search._chain import write_chain


def _config(**overrides):
    fields = dict(task="generic", budget=0.2, methods=("minmax",), include_fp16=False, bench_seconds=0.2,
                  measure_memory=False, explain=False)
    fields.update(overrides)
    return trimtab.TuneConfig(**fields)


@pytest.fixture
def chain(tmp_path):
    path = tmp_path / "chain.onnx"
    return path, write_chain(path)


def test_full_int8_misses_so_the_search_returns_a_verified_mixed_plan(tmp_path, chain):
    path, data = chain
    summary = trimtab.tune(path, data, data, _config(), out=tmp_path / "run")
    search = summary.search
    assert search["status"] == "met" and 1 <= search["evaluations"] <= 8
    start = summary.candidate(search["start"])
    assert start.metric_drop > 0.2  # the best full-int8 candidate misses the budget
    mixed = summary.candidate(search["best"])
    assert mixed.precision == "mixed" and mixed.within_budget and mixed.metric_drop <= 0.2
    assert mixed.fallback_nodes and mixed.throughput_per_s > 0  # timed with the others
    assert (tmp_path / "run" / mixed.artifact).is_file()
    steps = search["steps"]
    assert any(not s["passes"] for s in steps) or search["evaluations"] == 1
    assert all((tmp_path / "run" / s["artifact"]).is_file() for s in steps)
    # the plan of a passing step falls back fewer groups than any failing one... is not required;
    # but the best is the shortest passing prefix found
    assert min(s["k"] for s in steps if s["passes"]) == next(s["k"] for s in steps if s["plan"] == mixed.extras.get(
        "search_step", s["plan"]) and s["passes"])
    assert json.loads((tmp_path / "run" / "sensitivity.json").read_text())["rows"]


def test_rerunning_into_the_same_folder_repeats_no_evaluation(tmp_path, chain):
    path, data = chain
    first = trimtab.tune(path, data, data, _config(), out=tmp_path / "run")
    second = trimtab.tune(path, data, data, _config(), out=tmp_path / "run")
    assert second.search["evaluations_total"]["run"] == 0
    assert second.search["evaluations"] == 0 and second.search["reused"] == first.search["evaluations"]
    assert second.search["best"] == first.search["best"]
    assert second.candidate(second.search["best"]).fallback_nodes == first.candidate(first.search["best"]).fallback_nodes
    assert any("Resumed" in note for note in second.notes)


def test_other_data_makes_the_saved_state_stale(tmp_path, chain):
    path, data = chain
    trimtab.tune(path, data, data, _config(), out=tmp_path / "run")
    other = write_chain(tmp_path / "same.onnx", seed=0, samples=40)  # same model, fewer samples
    summary = trimtab.tune(path, other, other, _config(), out=tmp_path / "run")
    assert summary.search["evaluations_total"]["reused"] == 0


def test_max_evals_and_time_limit_are_honoured(tmp_path, chain):
    path, data = chain
    capped = trimtab.tune(path, data, data, _config(max_evals=1), out=tmp_path / "capped")
    assert capped.search["evaluations"] == 1
    assert capped.search["status"] in ("max_evals", "met")
    late = trimtab.tune(path, data, data, _config(time_limit_s=0.01, bench_seconds=30.0, explain=True,
                                                  measure_memory=True), out=tmp_path / "late")
    assert late.search["status"] == "time_limit" and late.search["evaluations"] == 0
    # past the limit: 3 timing rounds, no memory probes, no explain pass, and the summary says so
    assert all(c.peak_mem_bytes is None for c in late.candidates)
    assert any("3 rounds" in note for note in late.notes)
    assert "explain" not in late.timings_s and any("explain pass" in note for note in late.notes)
    assert late.chosen  # a decision is still made and written
    assert (tmp_path / "late" / "summary.json").is_file()


def test_search_off_and_budget_met_skip_the_search(tmp_path, chain):
    path, data = chain
    off = trimtab.tune(path, data, data, _config(search=False), out=tmp_path / "off")
    assert off.search["status"] == "skipped" and "off" in off.search["why"]
    easy = trimtab.tune(path, data, data, _config(budget=50.0), out=tmp_path / "easy")
    assert easy.search["status"] == "skipped" and "meets the budget" in easy.search["why"]


def test_strict_rule_judges_the_interval(tmp_path, chain):
    path, data = chain
    summary = trimtab.tune(path, data, data, _config(decision="strict"), out=tmp_path / "strict")
    assert summary.decision["rule"] == "strict"
    for c in summary.candidates:
        assert c.within_budget == (max(c.metric_drop, c.metric_ci95[1]) <= 0.2 + 1e-9)


def test_medical_scenario_and_edge_without_calibration(tmp_path, chain):
    from trimtab.scenarios import get_scenario

    path, data = chain
    medical = trimtab.tune(path, data, data, _config(**{**get_scenario("medical").config_fields(), "budget": 0.1}),
                           out=tmp_path / "medical")
    assert medical.scenario["name"] == "medical" and medical.decision["rule"] == "strict" and medical.budget == 0.1
    edge = trimtab.TuneConfig(**{**dict(task="generic", bench_seconds=0.2, explain=False),
                                 **get_scenario("edge").config_fields()})
    summary = trimtab.tune(path, None, data, edge, out=tmp_path / "edge")
    assert {c.precision for c in summary.candidates} == {"fp32", "fp16"}
    assert summary.decision["objective"] == "latency" and summary.candidates[0].batch_size == 1
