"""Evaluate a candidate against the fp32 reference on the same samples.

`collect_outputs` runs a backend over a dataset once and keeps the outputs; `evaluate` turns a
candidate's and the reference's outputs into an `EvalResult`: the task metric, its drop in
points with a paired-bootstrap 95% CI, McNemar's p for top-k, and extra closeness numbers.
Collecting once and evaluating from arrays means a report can re-evaluate without re-running.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from trimtab.errors import InvalidDataError, InvalidModelError
from trimtab.measure import metrics
from trimtab.options import Task

log = logging.getLogger(__name__)

ALL_OUTPUTS = "*"  # pass as output_name to collect every graph output
METRICS = {
    Task.CLASSIFY: ("top1", "top5", "agreement"),
    Task.EMBED: ("cosine",),
    Task.GENERIC: ("cosine", "sqnr"),
}
DEFAULT_METRIC = {Task.CLASSIFY: "top1", Task.EMBED: "cosine", Task.GENERIC: "cosine"}


class _Batched(Protocol):
    def batches(self, batch_size: int) -> Iterable: ...


@dataclass
class Outputs:
    """One model's outputs over a whole dataset: arrays concatenated along the sample axis.

    `arrays` maps output name -> [N, ...]; `output_name` is the one metrics read (`values`).
    `name` says whose outputs these are (candidate name), for error messages.
    """

    arrays: dict[str, np.ndarray]
    output_name: str
    labels: np.ndarray | None = None
    name: str = ""

    @property
    def values(self) -> np.ndarray:
        return self.arrays[self.output_name]

    def __len__(self) -> int:
        return len(self.values)


def collect_outputs(
    backend,
    dataset: _Batched,
    *,
    batch_size: int = 8,
    output_name: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    name: str = "",
) -> Outputs:
    """Run `backend.infer` on every batch and concatenate the chosen output along axis 0.

    `output_name` None = the first graph output; `ALL_OUTPUTS` ("*") keeps every output.
    Labels are kept when every batch has them. `progress(samples_done, samples_total|None)`.
    Memory is samples x output size: fine for logits and embeddings, not for feature maps.
    """
    backend.prepare()
    wanted = _wanted_outputs(backend.output_names, output_name)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    chunks: dict[str, list[np.ndarray]] = {out: [] for out in wanted}
    labels: list[np.ndarray] | None = []
    done = 0
    for batch in dataset.batches(batch_size):
        results = backend.infer(batch.inputs)
        for out in wanted:
            chunks[out].append(np.asarray(results[out]))
        labels = None if labels is None or batch.labels is None else labels + [np.asarray(batch.labels)]
        done += len(batch)
        if progress:
            progress(done, total)
    if done == 0:
        raise InvalidDataError("the dataset gave no batches", hint="check the data path and any `limit`")
    arrays = {out: np.concatenate(parts, axis=0) for out, parts in chunks.items()}
    joined = np.concatenate(labels).astype(np.int64) if labels else None
    log.debug("collected %d samples of %s from %s", done, wanted, name or backend.name)
    return Outputs(arrays, wanted[0], joined, name)


def _wanted_outputs(available: list[str], output_name: str | None) -> list[str]:
    if output_name is None:
        return available[:1]
    if output_name == ALL_OUTPUTS:
        return list(available)
    if output_name not in available:
        raise InvalidModelError(
            f"asked for output '{output_name}'; the model has outputs {available}",
            hint="pass one of the model's output names, or leave it out to use the first",
        )
    return [output_name]


@dataclass
class EvalResult:
    """A candidate's accuracy against the fp32 reference.

    `value`/`baseline_value` are fractions (sqnr: dB); `drop_points` = 100 x (baseline - value);
    `ci95` = paired-bootstrap 95% CI of the drop in points; `p_value` = McNemar's exact test
    (top-k metrics only, else None). `extras` holds secondary numbers (top5, agreement, cosine...).
    """

    metric: str
    value: float
    baseline_value: float
    drop_points: float
    ci95: tuple[float, float]
    p_value: float | None
    n_samples: int
    extras: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (summary.json forbids NaN/Inf: they become "inf"/"-inf"/null)."""
        data = asdict(self)
        for key in ("value", "baseline_value", "drop_points", "p_value"):
            data[key] = _to_json_number(data[key])
        data["ci95"] = [_to_json_number(x) for x in self.ci95]
        data["extras"] = {k: _to_json_number(v) for k, v in self.extras.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalResult":
        p_value = data.get("p_value")
        return cls(
            metric=data["metric"],
            value=_from_json_number(data["value"]),
            baseline_value=_from_json_number(data["baseline_value"]),
            drop_points=_from_json_number(data["drop_points"]),
            ci95=tuple(_from_json_number(x) for x in data["ci95"]),
            p_value=None if p_value is None else float(p_value),
            n_samples=int(data["n_samples"]),
            extras={k: _from_json_number(v) for k, v in data.get("extras", {}).items()},
        )


ExtraMetric = Callable[[Outputs, Outputs, "np.ndarray | None"], float]


def evaluate(
    task: Task | str,
    metric: str | None,
    candidate: Outputs,
    reference: Outputs,
    labels: np.ndarray | None = None,
    *,
    extra_metrics: dict[str, ExtraMetric] | None = None,
) -> EvalResult:
    """Score `candidate` against `reference` (the fp32 outputs on the same samples, same order).

    classify: top1 / top5 (need labels) or agreement (top-1 agreement with fp32, baseline 1.0).
    embed:    cosine (mean cosine to fp32, baseline 1.0).   generic: cosine or sqnr.
    `labels` default to the candidate's, then the reference's. Each `extra_metrics[name]` is
    called as fn(candidate, reference, labels) and as fn(reference, reference, labels); the
    results land in extras as `name` and `name_baseline` (e.g. a downstream probe accuracy).
    Raises InvalidModelError when any output is NaN/Inf.
    """
    task = Task(task)
    metric = metric or DEFAULT_METRIC[task]
    if metric not in METRICS[task]:
        raise ValueError(f"metric '{metric}' does not apply to task '{task}'; choose from {METRICS[task]}")
    _check_pair(candidate, reference)
    if labels is None:
        labels = candidate.labels if candidate.labels is not None else reference.labels
    scorer = _evaluate_classify if task == Task.CLASSIFY else _evaluate_closeness
    result = scorer(metric, candidate, reference, labels)
    for extra_name, fn in (extra_metrics or {}).items():
        result.extras[extra_name] = float(fn(candidate, reference, labels))
        result.extras[f"{extra_name}_baseline"] = float(fn(reference, reference, labels))
    return result


def _evaluate_classify(metric: str, cand: Outputs, ref: Outputs, labels) -> EvalResult:
    agree = metrics.top1_agreement_per_sample(cand.values, ref.values)
    extras = {"agreement": float(agree.mean())}
    if metric == "agreement":
        base_scores, cand_scores, p_value = np.ones(len(agree)), agree.astype(np.float64), None
    else:
        k = 5 if metric == "top5" else 1
        base_ok, cand_ok = _topk_pair(cand, ref, labels, k, metric)
        base_scores, cand_scores = base_ok.astype(np.float64), cand_ok.astype(np.float64)
        p_value = metrics.mcnemar_p(base_ok, cand_ok)
    if labels is not None:  # accuracy is worth showing even when agreement is the budgeted metric
        extras.update(_topk_extras(cand, ref, labels))
    return _result(metric, base_scores, cand_scores, p_value, extras)


def _topk_pair(cand: Outputs, ref: Outputs, labels, k: int, metric: str):
    if labels is None:
        raise InvalidDataError(
            f"metric '{metric}' needs labelled data; the data has no labels",
            hint="use labelled data, or --metric agreement (top-1 agreement with fp32 needs no labels)",
        )
    n_classes = _n_classes(ref)
    if k > n_classes:
        raise ValueError(f"metric '{metric}' needs at least {k} classes; the model outputs {n_classes}")
    return metrics.topk_correct(ref.values, labels, k), metrics.topk_correct(cand.values, labels, k)


def _topk_extras(cand: Outputs, ref: Outputs, labels) -> dict[str, float]:
    extras = {
        "top1": metrics.topk_accuracy(cand.values, labels, 1),
        "top1_baseline": metrics.topk_accuracy(ref.values, labels, 1),
    }
    if _n_classes(ref) >= 5:  # top-5 of fewer than 5 classes is always 1
        extras["top5"] = metrics.topk_accuracy(cand.values, labels, 5)
        extras["top5_baseline"] = metrics.topk_accuracy(ref.values, labels, 5)
    return extras


def _n_classes(outputs: Outputs) -> int:
    return int(np.prod(outputs.values.shape[1:], dtype=np.int64))


def _evaluate_closeness(metric: str, cand: Outputs, ref: Outputs, labels) -> EvalResult:
    cosines = metrics.cosine_per_sample(cand.values, ref.values)
    extras = {
        "cosine": float(cosines.mean()),
        "cosine_min": float(cosines.min()),
        "cosine_p5": float(np.percentile(cosines, 5)),
        "sqnr_db": metrics.sqnr_db(cand.values, ref.values),
    }
    if len(cand.arrays) > 1:  # every collected output, so a multi-output model shows which one drifts
        for out in cand.arrays:
            extras[f"cosine:{out}"] = metrics.mean_cosine(cand.arrays[out], ref.arrays[out])
            extras[f"sqnr_db:{out}"] = metrics.sqnr_db(cand.arrays[out], ref.arrays[out])
    if metric == "sqnr":
        # SQNR is in dB, not a fraction: it has no drop in points; budgets should use cosine.
        value = extras["sqnr_db"]
        return EvalResult(metric, value, math.inf, math.nan, (math.nan, math.nan), None, len(cosines), extras)
    return _result(metric, np.ones(len(cosines)), cosines, None, extras)


def _result(metric, base_scores, cand_scores, p_value, extras) -> EvalResult:
    """Value, drop and CI from per-sample scores (the headline numbers are their means)."""
    value, baseline = float(cand_scores.mean()), float(base_scores.mean())
    lo, hi = metrics.paired_bootstrap_ci(base_scores, cand_scores)
    return EvalResult(
        metric=metric,
        value=value,
        baseline_value=baseline,
        drop_points=metrics.accuracy_drop_points(baseline, value),
        ci95=(100.0 * lo, 100.0 * hi),
        p_value=p_value,
        n_samples=len(cand_scores),
        extras=extras,
    )


def _check_pair(cand: Outputs, ref: Outputs) -> None:
    for outputs, role in ((cand, "candidate"), (ref, "reference")):
        for out, array in outputs.arrays.items():
            check_finite(array, f"{role} '{outputs.name or '?'}' output '{out}'")
    if cand.values.shape != ref.values.shape:
        raise InvalidDataError(
            f"candidate '{cand.name}' output has shape {cand.values.shape}, reference '{ref.name}' "
            f"has {ref.values.shape}",
            hint="collect both with the same dataset, batch order and output name",
        )


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise InvalidModelError when `array` holds NaN or Inf (a broken artifact, not a small drop)."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InvalidModelError(
            f"{what}: the artifact produces non-finite outputs ({bad} of {array.size} values are NaN/Inf)",
            hint="keep the overflowing layers in fp32 (fp16 overflows past 65504) "
            "or check the calibration ranges",
        )


def probe_metric(*, test_fraction: float = 0.3, seed: int = 0, fit_on: str = "reference") -> ExtraMetric:
    """An `extra_metrics` entry: downstream accuracy of a linear probe on the embeddings.

    The labels are split once (stratified, fixed seed). `fit_on="reference"` trains the probe on
    the fp32 embeddings and applies it to the candidate's, as in deployment where a head trained
    once is kept when the encoder is swapped; `fit_on="candidate"` retrains it per candidate.
    """
    if fit_on not in ("reference", "candidate"):
        raise ValueError(f"fit_on must be 'reference' or 'candidate', got {fit_on!r}")

    def probe_accuracy(cand: Outputs, ref: Outputs, labels) -> float:
        if labels is None:
            raise InvalidDataError("the probe metric needs labelled data", hint="use a labelled dataset")
        train, test = metrics.stratified_split(labels, test_fraction=test_fraction, seed=seed)
        source = ref if fit_on == "reference" else cand
        probe = metrics.fit_linear_probe(source.values[train], np.asarray(labels)[train])
        return metrics.probe_accuracy(probe, cand.values[test], np.asarray(labels)[test])

    return probe_accuracy


def _to_json_number(x: float | None) -> float | str | None:
    if x is None or math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def _from_json_number(x: float | str | None) -> float:
    return math.nan if x is None else float(x)  # float("inf") / float("-inf") parse the strings
