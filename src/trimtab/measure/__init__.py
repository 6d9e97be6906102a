"""measure stage: accuracy against the fp32 reference (evaluate) and speed/memory (bench).

    collect_outputs -> Outputs -> evaluate -> EvalResult       (metrics: pure numpy functions)
    bench_interleaved / bench_batch_sweep -> BenchResult;  peak_memory_bytes (fresh subprocess)
"""

from trimtab.measure.bench import (
    BenchResult,
    bench_batch_sweep,
    bench_interleaved,
    peak_memory_bytes,
    peak_memory_by_candidate,
    resize_batch,
)
from trimtab.measure.evaluate import (
    ALL_OUTPUTS,
    EvalResult,
    Outputs,
    check_finite,
    collect_outputs,
    evaluate,
    probe_metric,
)
from trimtab.measure.metrics import (
    LinearProbe,
    accuracy_drop_points,
    cosine_per_sample,
    fit_linear_probe,
    mcnemar_p,
    mean_cosine,
    paired_bootstrap_ci,
    probe_accuracy,
    sqnr_db,
    stratified_split,
    top1_agreement,
    top1_agreement_per_sample,
    topk_accuracy,
    topk_correct,
)

__all__ = [
    "ALL_OUTPUTS",
    "BenchResult",
    "EvalResult",
    "LinearProbe",
    "Outputs",
    "accuracy_drop_points",
    "bench_batch_sweep",
    "bench_interleaved",
    "check_finite",
    "collect_outputs",
    "cosine_per_sample",
    "evaluate",
    "fit_linear_probe",
    "mcnemar_p",
    "mean_cosine",
    "paired_bootstrap_ci",
    "peak_memory_by_candidate",
    "peak_memory_bytes",
    "probe_accuracy",
    "probe_metric",
    "resize_batch",
    "sqnr_db",
    "stratified_split",
    "top1_agreement",
    "top1_agreement_per_sample",
    "topk_accuracy",
    "topk_correct",
]
