"""The fp8 candidate: float8e4m3fn QuantizeLinear/DequantizeLinear pairs, for GPUs with fp8 tensor
cores (Hopper and later).

Same placement as the int8 `tensorrt` flavour (Q/DQ on the inputs of quantizable ops, symmetric,
per-tensor activations, per-channel weights, biases float), with fp8 instead of int8: activation
scale = amax / 448, weight scale = max |w_c| / 448, zero points 0, values saturated to +-448 and
rounded to the nearest fp8 value. fp8 keeps 3 mantissa bits at every magnitude instead of int8's
uniform steps, so outliers cost less resolution. The model is moved to opset 19 first (float8
QuantizeLinear/DequantizeLinear). By default what stays unquantized runs in fp16 (the engine that
runs fp8 is a GPU's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from trimtab.build.artifact import Artifact
from trimtab.build.int8 import build_qdq
from trimtab.build.plan import PrecisionPlan
from trimtab.options import Int8Flavour, Precision

if TYPE_CHECKING:
    from trimtab.calibrate.ranges import TensorRange


def build_fp8(model, ranges: Mapping[str, TensorRange], *, plan: PrecisionPlan | None = None,
              method_name: str | None = None, skip_tensors: set[str] | frozenset[str] = frozenset(),
              unquantized: Precision | str = Precision.FP16) -> Artifact:
    """fp8 Q/DQ in a copy of `model` from the calibration `ranges` (tensor name -> TensorRange).
    `plan` and `skip_tensors` work as in `build_int8` (nodes the plan maps to int8 get fp8)."""
    return build_qdq(model, ranges, Int8Flavour.TENSORRT, Precision.FP8, plan=plan, method_name=method_name,
                     skip_tensors=skip_tensors, unquantized=unquantized)
