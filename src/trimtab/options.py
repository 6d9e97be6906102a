"""Options shared by the API and the CLI, spelled the same in both (StrEnum values are the CLI words)."""

from __future__ import annotations

from enum import StrEnum


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"  # GPUs only: ONNX Runtime's CPU provider has no bf16 kernels (trimtab.build.build_bf16)
    INT8 = "int8"
    FP8 = "fp8"  # float8e4m3fn Q/DQ (GPUs with fp8 tensor cores; trimtab.build.build_fp8)


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"
    MSE = "mse"


class Int8Flavour(StrEnum):
    """Where the int8 artifact will run decides how Q/DQ is placed (see DESIGN.md)."""

    TENSORRT = "tensorrt"  # symmetric int8 activations, TensorRT's Q/DQ rules
    ORT_CPU = "ort-cpu"  # uint8 activations + int8 weights (U8S8), fast on x86


class Task(StrEnum):
    CLASSIFY = "classify"
    EMBED = "embed"
    GENERIC = "generic"


class Target(StrEnum):
    ORT_CPU = "ort-cpu"
    GPU = "gpu"
    TENSORRT = "tensorrt"


class DecisionRule(StrEnum):
    """How a measured drop is judged against the budget (search/decide.py)."""

    POINT = "point"  # the point estimate is within the budget (warn when the interval is not)
    STRICT = "strict"  # the 95% interval's upper bound is within the budget


class Objective(StrEnum):
    """What "fastest" means when choosing."""

    THROUGHPUT = "throughput"  # samples per second at the bench batch
    LATENCY = "latency"  # median latency per batch
    P99 = "p99"  # 99th-percentile latency per batch
