"""build stage: one typed ONNX artifact per candidate precision.

    build_fp32(model)                                   -> Artifact (the prepared model as is)
    build_fp16(model, plan=None)                        -> Artifact (Casts, risky ops kept fp32)
    build_bf16(model, plan=None)                        -> Artifact (the same rule in bf16; GPUs only)
    build_int8(model, ranges, flavour, *, plan=None,
               method_name=None, skip_tensors=...,
               smoothing=None, unquantized="fp32")      -> Artifact (Q/DQ placed per flavour)
    build_fp8(model, ranges, *, plan=None, ...)         -> Artifact (float8e4m3fn Q/DQ, fp16 elsewhere)
    Smoothing(calibration.channels, alpha=0.75)         SmoothQuant-style outlier migration for build_int8
    check_tensorrt_qdq(proto)                           -> list[Finding] (TensorRT's Q/DQ rules)
    PrecisionPlan                                       which precision each node gets, as data
"""

from trimtab.build.artifact import Artifact
from trimtab.build.fp16 import build_bf16, build_fp16
from trimtab.build.fp32 import build_fp32
from trimtab.build.fp8 import build_fp8
from trimtab.build.int8 import build_int8
from trimtab.build.plan import MatchKind, PlanRule, PrecisionPlan
from trimtab.build.smooth import Smoothing
from trimtab.build.trt_rules import Finding, check_tensorrt_qdq

__all__ = [
    "Artifact",
    "Finding",
    "MatchKind",
    "PlanRule",
    "PrecisionPlan",
    "Smoothing",
    "build_bf16",
    "build_fp16",
    "build_fp32",
    "build_fp8",
    "build_int8",
    "check_tensorrt_qdq",
]
