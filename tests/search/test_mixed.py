"""The prefix search: shortest passing prefix, evaluation bounds, time limit, resume."""

import math
from types import SimpleNamespace

import pytest

from trimtab.search.mixed import OrderedGroup, Step, order_groups, prefix_nodes, search


def _groups(gains):
    return [OrderedGroup(f"g{i}", (f"n{i}",), gain, 1.0) for i, gain in enumerate(gains)]


def _verifier(drop_of_k, budget, calls):
    def verify(k):
        calls.append(k)
        drop = drop_of_k(k)
        return Step(k=k, plan=f"p{k}", fallback_nodes=[f"n{i}" for i in range(k)], metric_value=1 - drop / 100,
                    drop=drop, ci95=[drop - 0.1, drop + 0.1], passes=drop <= budget, artifact=f"models/p{k}.onnx",
                    seconds=0.0, est_cost_ms=float(k))
    return verify


@pytest.mark.parametrize("answer", [1, 2, 5, 17, 39, 40])
def test_finds_the_shortest_passing_prefix_in_log_evaluations(answer):
    total = 40
    groups = _groups([1.0 / (i + 1) for i in range(total)])  # falling gains, as rankings are
    calls = []
    outcome = search(groups, _verifier(lambda k: 0.0 if k >= answer else 5.0, 1.0, calls), max_evals=20)
    assert outcome.status == "met"
    assert outcome.best.k == answer
    assert len(calls) == len(set(calls)) == outcome.evaluations
    assert outcome.evaluations <= 2 * math.ceil(math.log2(total + 1))


def test_no_prefix_passes():
    calls = []
    outcome = search(_groups([1.0] * 6), _verifier(lambda k: 5.0, 1.0, calls), max_evals=20)
    assert outcome.status == "not_met" and outcome.best is None
    assert 6 in calls  # the full list was tried before giving up


def test_max_evals_and_deadline_are_honoured():
    calls = []
    outcome = search(_groups([1.0] * 64), _verifier(lambda k: 0.0 if k >= 50 else 5.0, 1.0, calls), max_evals=2)
    assert outcome.status == "max_evals" and len(calls) == 2
    now = [0.0]

    def slow_verify(k, inner=_verifier(lambda k: 0.0 if k >= 50 else 5.0, 1.0, [])):
        now[0] += 10.0
        return inner(k)

    outcome = search(_groups([1.0] * 64), slow_verify, max_evals=99, deadline=25.0, clock=lambda: now[0])
    assert outcome.status == "time_limit" and outcome.evaluations == 3  # started at 0, 10, 20


def test_resume_reuses_finished_steps_and_reaches_the_same_answer():
    groups = _groups([2.0 ** -i for i in range(30)])
    drop = lambda k: 0.0 if k >= 11 else 5.0  # noqa: E731
    fresh_calls = []
    fresh = search(groups, _verifier(drop, 1.0, fresh_calls), max_evals=20)
    killed_after = fresh_calls[:3]
    done = {k: _verifier(drop, 1.0, [])(k) for k in killed_after}
    resumed_calls = []
    resumed = search(groups, _verifier(drop, 1.0, resumed_calls), done=done, max_evals=20)
    assert resumed.best.k == fresh.best.k == 11
    assert resumed.reused == 3 and resumed.evaluations == fresh.evaluations - 3
    assert not set(resumed_calls) & set(killed_after)


def test_order_groups_puts_gain_per_millisecond_first_and_useless_groups_last():
    def row(name, nodes, gain):
        return SimpleNamespace(group=SimpleNamespace(group=name, nodes=nodes), gain=gain)

    rows = [row("big", ("a",), 3.0), row("cheap", ("b",), 1.0), row("useless", ("c",), 0.0),
            row("harmful", ("d",), -1.0), row("nan", ("e",), float("nan"))]
    ordered = order_groups(rows, {"a": 30.0, "b": 1.0, "c": 0.1, "d": 1.0})
    assert [g.group for g in ordered] == ["cheap", "big", "useless", "harmful", "nan"]
    assert ordered[1].cost_ms == 30.0


def test_prefix_nodes_are_unique_and_ordered():
    groups = [OrderedGroup("x", ("a", "b"), 1, 1), OrderedGroup("y", ("b", "c"), 1, 1)]
    assert prefix_nodes(groups, 2) == ["a", "b", "c"]
    assert prefix_nodes(groups, 0) == []


def test_regula_falsi_aims_at_the_budget_with_measured_drops():
    """Drop falls linearly with the cumulative gain (equal gains): aimed probes land at once."""
    total, budget = 60, 2.0
    groups = _groups([1.0] * total)
    drop = lambda k: 10.0 * (1 - k / total)  # noqa: E731 - passes from k = 48
    calls = []
    outcome = search(groups, _verifier(drop, budget, calls), max_evals=20, base_drop=10.0, budget=budget)
    assert outcome.best.k == 48
    assert calls[0] == 48  # the first aimed probe hits the answer
    assert outcome.evaluations <= 3
