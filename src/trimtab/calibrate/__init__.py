"""calibrate stage: stream data through the model into per-tensor histograms of |x|, then pick a
clipping range per tensor by minmax / entropy (KL) / percentile / mse; cache histograms per
(model, data); export ranges in TensorRT's calibration cache format.

    calibrate(model, dataset, method, cache_dir=...) -> Calibration
      = collect_histograms (one pass, cached)  ->  compute_ranges (per method, cached)
"""

from trimtab.calibrate.cache import (
    Calibration,
    cache_folder,
    calibrate,
    clipped_fraction,
    load_histograms,
)
from trimtab.calibrate.collect import (
    collect_histograms,
    matmul_inputs,
    quantizable_tensors,
)
from trimtab.calibrate.histogram import ChannelRange, HistogramSet, TensorHistogram
from trimtab.calibrate.methods import (
    amax_for,
    compute_ranges,
    entropy_amax,
    minmax_amax,
    mse_amax,
    percentile_amax,
)
from trimtab.calibrate.ranges import TensorRange
from trimtab.calibrate.trt_cache import read_trt_cache, write_trt_cache
from trimtab.calibrate.weights import (
    dequantize,
    quantize_symmetric,
    quantize_symmetric_per_tensor,
    quantize_with_scale,
    symmetric_scale,
)

__all__ = [
    "Calibration",
    "ChannelRange",
    "HistogramSet",
    "TensorHistogram",
    "TensorRange",
    "amax_for",
    "cache_folder",
    "calibrate",
    "clipped_fraction",
    "collect_histograms",
    "compute_ranges",
    "dequantize",
    "entropy_amax",
    "load_histograms",
    "matmul_inputs",
    "minmax_amax",
    "mse_amax",
    "percentile_amax",
    "quantizable_tensors",
    "quantize_symmetric",
    "quantize_symmetric_per_tensor",
    "quantize_with_scale",
    "read_trt_cache",
    "symmetric_scale",
    "write_trt_cache",
]
