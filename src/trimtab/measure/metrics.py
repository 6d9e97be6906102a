"""Accuracy metrics as pure numpy functions: each takes arrays, returns numbers, keeps no state.

Conventions (docs/contracts.md): metric values are fractions in [0, 1]; drops are in points
(100 x fraction). Per-sample functions (`*_per_sample`, `topk_correct`) exist so that a paired
bootstrap or McNemar test can run on the same samples the headline number came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_BOOTSTRAP_INDICES = 1 << 22  # indices drawn at once (32 MB of int64), whatever the sample count


# classification ------------------------------------------------------------------------------
def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> np.ndarray:
    """Per-sample correctness: correct_i = [labels_i in the k largest logits_i].

    `logits` is [N, C] (extra trailing axes are flattened into C); returns bool [N].
    Ties are broken by position (argpartition), as deployed argmax code would.
    """
    scores = _as_rows(logits)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(scores):
        raise ValueError(f"{len(scores)} rows of logits but {len(labels)} labels")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k={k} needs 1 <= k <= number of classes ({scores.shape[1]})")
    if k == 1:
        return np.argmax(scores, axis=1) == labels
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.any(top == labels[:, None], axis=1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy = (1/N) sum_i [labels_i in topk(logits_i)], a fraction in [0, 1]."""
    return float(np.mean(topk_correct(logits, labels, k)))


def top1_agreement_per_sample(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """agree_i = [argmax candidate_i == argmax reference_i], bool [N].

    Needs no labels: it asks "does the low-precision model decide like the fp32 one?".
    """
    cand, ref = _paired_rows(candidate, reference)
    return np.argmax(cand, axis=1) == np.argmax(ref, axis=1)


def top1_agreement(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Agreement = (1/N) sum_i [argmax candidate_i == argmax reference_i]."""
    return float(np.mean(top1_agreement_per_sample(candidate, reference)))


# closeness of raw outputs --------------------------------------------------------------------
def cosine_per_sample(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """cos_i = <x_i, r_i> / (|x_i| |r_i|) over the flattened rows, float64 [N].

    Edge cases, chosen so that "identical" always scores 1: two zero rows give 1.0, one zero row
    against a non-zero row gives 0.0 (the direction is lost entirely).
    """
    cand, ref = _paired_rows(candidate, reference)
    cand, ref = cand.astype(np.float64), ref.astype(np.float64)
    dots = np.einsum("ij,ij->i", cand, ref)
    norms = np.linalg.norm(cand, axis=1) * np.linalg.norm(ref, axis=1)
    both_zero = ~cand.any(axis=1) & ~ref.any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    cosines[both_zero] = 1.0
    return np.clip(cosines, -1.0, 1.0)  # rounding can land a hair outside [-1, 1]


def mean_cosine(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Mean cosine = (1/N) sum_i cos_i (see `cosine_per_sample`)."""
    return float(np.mean(cosine_per_sample(candidate, reference)))


def sqnr_db(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, SQNR = 10 log10( sum r^2 / sum (r - x)^2 ) in dB.

    Summed over every element (one number for the whole tensor). +inf when x == r exactly;
    -inf when the reference is all zeros but the candidate is not. Each int8 bit is worth ~6 dB.
    """
    cand = np.asarray(candidate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if cand.shape != ref.shape:
        raise ValueError(f"shapes differ: candidate {cand.shape}, reference {ref.shape}")
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def accuracy_drop_points(baseline: float, candidate: float) -> float:
    """Drop in points = 100 x (baseline - candidate); positive means the candidate is worse."""
    return 100.0 * (float(baseline) - float(candidate))


# uncertainty ---------------------------------------------------------------------------------
def paired_bootstrap_ci(
    baseline_scores: np.ndarray,
    candidate_scores: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean paired difference d = mean_i (baseline_i - candidate_i).

    Samples are resampled with replacement as pairs (the same index for both), so the CI reflects
    that the two models saw the same inputs. Returned in the scores' units (x100 for points).
    Fixed `seed`: the same inputs always give the same interval. Identical scores give (0, 0).
    """
    diffs = np.asarray(baseline_scores, np.float64) - np.asarray(candidate_scores, np.float64)
    if diffs.ndim != 1 or len(diffs) == 0:
        raise ValueError(f"need two equal-length 1-D score vectors, got difference shape {diffs.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, _BOOTSTRAP_INDICES // len(diffs))
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        picks = rng.integers(0, len(diffs), size=(stop - start, len(diffs)))
        means[start:stop] = diffs[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def mcnemar_p(baseline_correct: np.ndarray, candidate_correct: np.ndarray, *, mid_p: bool = False) -> float:
    """McNemar's exact test on paired correct/incorrect vectors, two-sided p-value.

    Only discordant pairs count: b = baseline right & candidate wrong, c = the reverse.
    Under H0 (same accuracy) b ~ Binomial(n = b + c, 1/2), so
        exact:  p = min(1, 2 P(X <= min(b, c)))
        mid-p:  p = min(1, 2 [P(X <= min(b, c)) - P(X = min(b, c)) / 2])   (less conservative)
    n = 0 (no disagreements) gives p = 1.
    """
    base = np.asarray(baseline_correct, dtype=bool).reshape(-1)
    cand = np.asarray(candidate_correct, dtype=bool).reshape(-1)
    if base.shape != cand.shape:
        raise ValueError(f"paired vectors differ in length: {base.shape} vs {cand.shape}")
    b = int(np.sum(base & ~cand))
    c = int(np.sum(~base & cand))
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    pmf = _binomial_half_pmf(n)
    tail = float(np.sum(pmf[: k + 1]))
    if mid_p:
        tail -= 0.5 * float(pmf[k])
    return min(1.0, 2.0 * tail)


def _binomial_half_pmf(n: int) -> np.ndarray:
    """P(X = i) for X ~ Binomial(n, 1/2), i = 0..n, via log C(n, i) = sum_j log((n-j+1)/j).

    Logs keep it exact enough for any n (2^-n underflows float64 past n ~ 1074).
    """
    j = np.arange(1, n + 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(n - j + 1) - np.log(j))])
    return np.exp(log_comb - n * math.log(2.0))


# a downstream probe for embeddings -----------------------------------------------------------
@dataclass(frozen=True)
class LinearProbe:
    """Multinomial logistic regression on standardised embeddings (see `fit_linear_probe`)."""

    mean: np.ndarray  # [D] feature means of the training embeddings
    scale: np.ndarray  # [D] feature standard deviations (1 where a feature is constant)
    weights: np.ndarray  # [D, K]
    bias: np.ndarray  # [K]
    classes: np.ndarray  # [K] the label value of each output column

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Label with the largest score, argmax_k (z W + b)_k, with z the standardised row."""
        z = (_as_rows(embeddings).astype(np.float64) - self.mean) / self.scale
        return self.classes[np.argmax(z @ self.weights + self.bias, axis=1)]


def fit_linear_probe(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    *,
    l2: float = 1e-2,
    steps: int = 500,
    learning_rate: float = 0.5,
) -> LinearProbe:
    """Fit softmax regression by full-batch gradient descent from zero weights.

    Minimises  (1/N) sum_i -log softmax(z_i W + b)_{y_i}  +  (l2/2) |W|^2  with z the features
    standardised by the training mean/std. Zero init + full batches = no randomness: the same
    embeddings always give the same probe, so a probe accuracy change comes from the embeddings.
    """
    x = _as_rows(train_embeddings).astype(np.float64)
    classes, y = np.unique(np.asarray(train_labels).reshape(-1), return_inverse=True)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - mean) / scale
    onehot = np.eye(len(classes))[y]
    weights, bias = np.zeros((z.shape[1], len(classes))), np.zeros(len(classes))
    for _ in range(steps):
        grad = _softmax(z @ weights + bias) - onehot  # d loss / d logits, per sample
        weights -= learning_rate * (z.T @ grad / len(z) + l2 * weights)
        bias -= learning_rate * grad.mean(axis=0)
    return LinearProbe(mean, scale, weights, bias, classes)


def probe_accuracy(probe: LinearProbe, embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy = (1/N) sum_i [probe.predict(e_i) == labels_i]."""
    return float(np.mean(probe.predict(embeddings) == np.asarray(labels).reshape(-1)))


def stratified_split(labels: np.ndarray, *, test_fraction: float = 0.3, seed: int = 0):
    """Fixed train/test index split that keeps each label's share: (train_idx, test_idx), sorted.

    Per label, a seeded permutation puts round(test_fraction x count) samples in the test set.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    test = []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        test.extend(members[: int(round(test_fraction * len(members)))])
    test_idx = np.sort(np.asarray(test, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


# helpers -------------------------------------------------------------------------------------
def _as_rows(array: np.ndarray) -> np.ndarray:
    """[N, ...] -> [N, D]: one row per sample."""
    array = np.asarray(array)
    if array.ndim == 0:
        raise ValueError("expected a batch of samples, got a scalar")
    return array.reshape(len(array), -1)


def _paired_rows(candidate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cand, ref = np.asarray(candidate), np.asarray(reference)
    if cand.shape != ref.shape:
        raise ValueError(f"shapes differ: candidate {cand.shape}, reference {ref.shape}")
    return _as_rows(cand), _as_rows(ref)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
