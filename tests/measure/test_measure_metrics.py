"""Metric functions on cases small enough to check by hand (or by brute-force enumeration)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from trimtab.measure import metrics


def test_topk_correct_by_hand():
    logits = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 0])
    assert metrics.topk_correct(logits, labels, 1).tolist() == [True, False, False]
    assert metrics.topk_correct(logits, labels, 2).tolist() == [True, True, False]
    assert metrics.topk_correct(logits, labels, 3).tolist() == [True, True, True]
    assert metrics.topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)


def test_topk_rejects_bad_k_and_lengths():
    with pytest.raises(ValueError):
        metrics.topk_correct(np.zeros((2, 3)), np.array([0, 1]), k=4)
    with pytest.raises(ValueError):
        metrics.topk_correct(np.zeros((2, 3)), np.array([0]), k=1)


def test_top1_agreement_ignores_scale():
    ref = np.array([[1.0, 2.0], [3.0, 1.0], [0.0, 1.0], [2.0, 0.0]])
    cand = np.array([[10.0, 20.0], [1.0, 3.0], [0.0, 5.0], [9.0, 1.0]])  # row 1 flips
    assert metrics.top1_agreement_per_sample(cand, ref).tolist() == [True, False, True, True]
    assert metrics.top1_agreement(cand, ref) == 0.75


def test_cosine_known_values_and_zero_rows():
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    cand = np.array([[0.0, 3.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    expected = [0.0, 1.0, 1.0, 0.0, -1.0]
    np.testing.assert_allclose(metrics.cosine_per_sample(cand, ref), expected, atol=1e-12)
    assert metrics.mean_cosine(cand, ref) == pytest.approx(0.2)


def test_cosine_flattens_trailing_axes():
    ref = np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 1
    cosines = metrics.cosine_per_sample(ref * 3, ref)
    assert cosines.shape == (2,)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-6)


def test_sqnr_known_values():
    ref = np.array([3.0, 4.0])  # signal energy 25
    assert metrics.sqnr_db(ref, ref) == math.inf
    noisy = ref + np.array([0.5, 0.0])  # noise energy 0.25: 10 log10(100) = 20 dB
    assert metrics.sqnr_db(noisy, ref) == pytest.approx(20.0)
    assert metrics.sqnr_db(np.zeros(2) + 5.0, ref) == pytest.approx(10 * math.log10(25 / 5))
    assert metrics.sqnr_db(np.ones(2), np.zeros(2)) == -math.inf


def test_accuracy_drop_points():
    assert metrics.accuracy_drop_points(0.765, 0.755) == pytest.approx(1.0)
    assert metrics.accuracy_drop_points(0.5, 0.6) == pytest.approx(-10.0)


def _mcnemar_by_enumeration(b: int, c: int, mid_p: bool = False) -> float:
    """Walk every one of the 2^n outcomes of the n discordant pairs, each with probability 2^-n."""
    n, k = b + c, min(b, c)
    low = equal = 0
    for outcome in itertools.product((0, 1), repeat=n):
        ones = sum(outcome)
        low += ones <= k
        equal += ones == k
    tail = Fraction(low, 2**n) - (Fraction(equal, 2 ** (n + 1)) if mid_p else 0)
    return min(1.0, float(2 * tail))


def _paired_vectors(b: int, c: int, both_right: int = 7, both_wrong: int = 4):
    base = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    cand = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(base), np.array(cand)


@pytest.mark.parametrize("b,c", [(10, 3), (3, 10), (6, 6), (1, 0), (12, 0), (5, 2)])
@pytest.mark.parametrize("mid_p", [False, True])
def test_mcnemar_matches_enumeration(b, c, mid_p):
    base, cand = _paired_vectors(b, c)
    expected = _mcnemar_by_enumeration(b, c, mid_p)
    assert metrics.mcnemar_p(base, cand, mid_p=mid_p) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_known_table():
    base, cand = _paired_vectors(10, 3)
    # 2 * (C(13,0)+C(13,1)+C(13,2)+C(13,3)) / 2^13 = 2 * 378 / 8192
    assert metrics.mcnemar_p(base, cand) == pytest.approx(756 / 8192)
    assert metrics.mcnemar_p(base, base) == 1.0


def test_mcnemar_large_n_stays_exact():
    b, c = 1100, 1000  # 2^-2100 underflows float64; logs must carry it
    exact = 2 * Fraction(sum(math.comb(b + c, i) for i in range(c + 1)), 2 ** (b + c))
    base, cand = _paired_vectors(b, c)
    assert metrics.mcnemar_p(base, cand) == pytest.approx(float(exact), rel=1e-6)


def test_bootstrap_identical_scores_give_zero_interval():
    scores = np.array([1.0, 0.0, 1.0, 1.0])
    assert metrics.paired_bootstrap_ci(scores, scores) == (0.0, 0.0)


def _synthetic_pair(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Baseline right 80% of the time; candidate loses 10% of those and gains 5% of the rest:
    true mean difference = 0.8 * 0.10 - 0.2 * 0.05 = 0.07."""
    base = rng.random(n) < 0.8
    flip = np.where(base, rng.random(n) < 0.10, rng.random(n) < 0.05)
    return base.astype(float), (base ^ flip).astype(float)


def test_bootstrap_ci_covers_true_difference():
    rng = np.random.default_rng(123)
    trials, covered = 40, 0
    for trial in range(trials):
        base, cand = _synthetic_pair(400, rng)
        lo, hi = metrics.paired_bootstrap_ci(base, cand, resamples=1000, seed=trial)
        assert lo <= np.mean(base - cand) <= hi
        covered += lo <= 0.07 <= hi
    assert covered >= 0.85 * trials  # nominal 95%; 85% leaves room for 40 draws


def test_bootstrap_ci_narrows_with_more_samples_and_is_reproducible():
    rng = np.random.default_rng(7)
    small, large = _synthetic_pair(250, rng), _synthetic_pair(4000, rng)
    lo_s, hi_s = metrics.paired_bootstrap_ci(*small)
    lo_l, hi_l = metrics.paired_bootstrap_ci(*large)
    assert (hi_l - lo_l) < 0.4 * (hi_s - lo_s)  # width ~ 1/sqrt(n): expect ~0.25
    assert metrics.paired_bootstrap_ci(*small) == (lo_s, hi_s)


def test_linear_probe_separates_and_is_deterministic():
    rng = np.random.default_rng(0)
    labels = np.repeat([3, 7], 60)
    embeddings = rng.standard_normal((120, 16))
    embeddings[:, 0] += np.where(labels == 7, 6.0, -6.0)  # one informative direction
    train, test = metrics.stratified_split(labels, test_fraction=0.25, seed=0)
    probe = metrics.fit_linear_probe(embeddings[train], labels[train])
    again = metrics.fit_linear_probe(embeddings[train], labels[train])
    np.testing.assert_array_equal(probe.weights, again.weights)
    assert metrics.probe_accuracy(probe, embeddings[test], labels[test]) == 1.0
    noise = rng.standard_normal((120, 16))
    assert metrics.probe_accuracy(probe, noise[test], labels[test]) < 0.8


def test_stratified_split_keeps_shares_and_is_fixed():
    labels = np.array([0] * 70 + [1] * 30)
    train, test = metrics.stratified_split(labels, test_fraction=0.3, seed=1)
    assert len(test) == 30 and np.sum(labels[test] == 1) == 9
    assert set(train).isdisjoint(test) and len(train) + len(test) == 100
    np.testing.assert_array_equal(test, metrics.stratified_split(labels, test_fraction=0.3, seed=1)[1])
