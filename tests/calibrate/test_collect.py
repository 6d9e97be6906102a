"""One streaming pass over a tiny model: which tensors, same ranges as one big batch, int inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trimtab.calibrate.collect import collect_histograms, quantizable_tensors
from trimtab.errors import CalibrationError

from .conftest import StandInDataset, make_model, masked_attention


def _all_at_once(model, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    """Reference: every tensor of the whole data set from one ORT run."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    known = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known and n not in feeds)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return {n: feeds[n] if n in feeds else outputs[n] for n in names}


def test_tensor_selection_skips_weights_and_shape_arithmetic(cnn_model):
    assert quantizable_tensors(cnn_model.proto) == ["x", "conv", "relu", "flat", "mm", "y"]


def test_streamed_batches_match_one_pass(cnn_model, image_data):
    seen = []
    hist_set = collect_histograms(cnn_model, image_data, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(4, 10), (8, 10), (10, 10)]  # the last batch is smaller
    assert hist_set.meta["num_samples"] == 10 and hist_set.meta["model_sha256"] == cnn_model.sha256
    reference = _all_at_once(cnn_model, image_data.arrays, hist_set.names)
    for name, values in reference.items():
        hist = hist_set[name]
        assert hist.count == values.size, name
        assert (hist.min, hist.max) == (values.min(), values.max()), name
    assert hist_set["relu"].min == 0.0


def test_token_ids_and_additive_mask():
    model = make_model(masked_attention(), "attn")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 11, (6, 5)).astype(np.int64)
    mask = np.ones((6, 5), np.int64)
    mask[:, 1:] = 0  # mostly padding: the additive mask is mostly -3.4e38
    data = StandInDataset({"ids": ids, "mask": mask}, "text")
    hist_set = collect_histograms(model, data, batch_size=4)
    assert "ids" not in hist_set and "mask" not in hist_set  # int inputs: calibration starts at floats
    assert {"emb", "scores", "mask_f", "neg", "masked", "probs", "out"} <= set(hist_set.names)
    assert set(hist_set.sentinel_tensors()) == {"neg", "neg3", "masked"}
    assert "neg" in hist_set.dominated_tensors()
    assert hist_set["masked"].range < 1e3  # the sentinels did not stretch the histogram


def test_nan_in_data_names_tensor_and_samples(cnn_model):
    x = np.zeros((6, 3, 8, 8), np.float32)
    x[5, 0, 0, 0] = np.nan
    data = StandInDataset({"x": x}, "bad")
    with pytest.raises(CalibrationError) as info:
        collect_histograms(cnn_model, data, batch_size=4)
    assert "'x'" in str(info.value) and "bad#5" in str(info.value)


def test_subset_and_unknown_tensors(cnn_model, image_data):
    hist_set = collect_histograms(cnn_model, image_data, tensors=["relu", "y"])
    assert hist_set.names == ["relu", "y"]
    with pytest.raises(CalibrationError, match="W2"):
        collect_histograms(cnn_model, image_data, tensors=["W2"])


def test_empty_data_raises(cnn_model):
    with pytest.raises(CalibrationError, match="no samples"):
        collect_histograms(cnn_model, StandInDataset({"x": np.zeros((0, 3, 8, 8), np.float32)}))


def test_with_the_load_stage(image_data):
    load = pytest.importorskip("trimtab.load")
    from .conftest import conv_relu_matmul

    model = load.load_model(conv_relu_matmul())
    hist_set = collect_histograms(model, image_data, batch_size=3)
    assert len(hist_set) >= 3 and hist_set.meta["num_samples"] == 10
