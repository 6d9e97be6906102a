"""Coverage check: dark calibration images against normal validation photos warn; a
representative calibration set does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from trimtab.calibrate import calibrate, collect_histograms
from trimtab.data import Dataset
from trimtab.data.transforms import ImageTransform
from trimtab.explain.coverage import (
    CoverageResult,
    CoverageThresholds,
    LayerCoverage,
    _warnings,
    coverage,
)
from trimtab.load import load_model

SIZE = 16


def _tiny_cnn(seed: int = 0):
    """x[N,3,16,16] -> Conv(8) -> Relu -> Conv(8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y[N,4]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "W1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "B1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "W2"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def _photos(folder: Path, count: int, seed: int, brightness: float = 1.0) -> Path:
    """`count` synthetic "photos": a random colour gradient plus texture, with a random exposure;
    `brightness` < 1 scales every pixel towards black."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, SIZE + 4)
    for index in range(count):
        low, high = rng.uniform(0, 90, 3), rng.uniform(150, 255, 3)
        direction = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
        base = low + (high - low) * direction[..., None]
        pixels = base + rng.normal(0, 25, (SIZE + 4, SIZE + 4, 3))
        pixels = np.clip(pixels * brightness, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:03d}.png")
    return folder


def _dataset(folder: Path) -> Dataset:
    transform = ImageTransform.preset("imagenet", input_name="x", resize=SIZE, crop=SIZE)
    return Dataset(folder, transform)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("coverage")
    return {
        "validation": _dataset(_photos(root / "validation", 24, seed=1)),
        "representative": _dataset(_photos(root / "representative", 24, seed=2)),
        "dark": _dataset(_photos(root / "dark", 24, seed=2, brightness=0.15)),
    }


@pytest.fixture(scope="module")
def model():
    return _tiny_cnn()


def test_dark_calibration_warns_and_representative_does_not(model, data):
    results = {}
    for kind in ("representative", "dark"):
        hists = collect_histograms(model, data[kind])
        results[kind] = coverage(model, hists, data["validation"], calibration_data=data[kind])
    good, dark = results["representative"], results["dark"]

    assert good and good.warnings == []
    assert not dark and len(dark.warnings) >= 2
    assert any("Input 'x' has mean" in s for s in dark.warnings)
    assert any("Input 'x' has" in s and "outside the range calibrated for it" in s for s in dark.warnings)
    # the numbers behind the sentences
    (dark_x,) = dark.inputs
    assert dark_x.calibration.mean < dark_x.validation.mean - 1.0 and dark_x.shift_se > 10
    assert dark_x.calibration.percentiles["p99"] < dark_x.validation.percentiles["p50"]
    assert max(layer.outside for layer in good.layers) < 0.01
    assert dark.uncovered()[0].name == "x" and good.uncovered() == []
    # the dark inputs sit in [-2.1, -1.3]: |x| covers most of the bright validation values, the
    # signed (uint8) range does not
    dark_input, good_input = dark.layers[0], good.layers[0]
    assert dark_input.name == good_input.name == "x"
    assert dark_input.outside_asymmetric > 0.5 and good_input.outside_asymmetric < 0.01
    assert {layer.name for layer in dark.layers} == {"x", "c1", "r1", "c2", "r2", "gap", "flat", "y"}


def test_layers_only_from_a_calibration(model, data, tmp_path):
    """Ranges from `calibrate` (no calibration data at hand): the layer check alone catches it."""
    calib = calibrate(model, data["dark"], "percentile", cache_dir=tmp_path)
    result = coverage(model, calib, data["validation"])
    assert result.inputs == [] and not result
    assert any("outside the range calibrated for it" in s for s in result.warnings)
    ranges_only = coverage(model, calib.ranges, data["validation"])
    assert [layer.outside for layer in ranges_only.layers] == [layer.outside for layer in result.layers]


def test_json_round_trip(model, data, tmp_path):
    hists = collect_histograms(model, data["dark"])
    result = coverage(model, hists, data["validation"], calibration_data=data["dark"])
    path = result.save(tmp_path / "coverage.json")
    saved = json.loads(path.read_text())
    assert saved["passed"] is False and saved["warnings"] == result.warnings
    assert CoverageResult.load(path) == result


def _layer(name: str, excess: float) -> LayerCoverage:
    return LayerCoverage(name, 1.0, 0.0, 2.0, excess, excess, excess)


def test_layer_rule():
    """Limit max(1%, 2 / (n + 1)); one uncovered hidden layer is chance, two of eight are not;
    an uncovered model input always warns."""
    def warnings(excesses: list[float], samples: int = 0) -> list[str]:
        layers = [_layer(f"t{i}", e) for i, e in enumerate(excesses)]
        result = CoverageResult([], layers, [], calibration_samples=samples)
        return _warnings(result, {"t0"})

    assert warnings([0.0] * 8) == []
    assert warnings([0.0] + [0.05] + [0.0] * 6) == []
    (sentence,) = warnings([0.0, 0.05, 0.05] + [0.0] * 5)
    assert sentence.startswith("2 of 8 layers have more than 1% of their validation activations")
    assert warnings([0.0, 0.05, 0.05] + [0.0] * 5, samples=24) == []  # 2 / 25 = 8% allowed
    (sentence,) = warnings([0.3] + [0.0] * 7, samples=24)
    assert sentence.startswith("Input 't0' has 30.0% of its validation values outside")
    assert len(warnings([0.0] + [0.05] * 7 + [0.0] * 92)) == 0  # 7 of 100 is under 10%
    assert len(warnings([0.0] + [0.05] * 11 + [0.0] * 88)) == 1


def test_thresholds_validate():
    with pytest.raises(ValueError, match="std_ratio"):
        CoverageThresholds(std_ratio=0.5)
    with pytest.raises(ValueError, match="layer_share"):
        CoverageThresholds(layer_share=2.0)


def test_tensors_of_another_model_are_refused(model, data):
    from trimtab.calibrate.ranges import TensorRange
    from trimtab.errors import CalibrationError

    with pytest.raises(CalibrationError, match="none of the 1 calibrated tensors"):
        coverage(model, {"other": TensorRange(1.0, -1.0, 1.0)}, data["validation"])


@pytest.mark.slow
def test_effnet_lite0_dark_photos(tmp_path):
    """The real example: its calibration photos scaled towards black in pixel space (before the
    example's (x - 127) / 128) warn against the validation photos; the photos as they are do not."""
    from trimtab.examples import get_example

    example = get_example("effnet-lite0")
    model = load_model(example.model_path())
    calib, validation = example.calibration_data(32), example.validation_data()
    dark = Dataset([_darken(sample) for sample in calib], name="dark")
    for calibration_set, expect_warning in ((calib, False), (dark, True)):
        hists = collect_histograms(model, calibration_set, batch_size=16)
        result = coverage(model, hists, validation, calibration_data=calibration_set, batch_size=10)
        assert bool(result.warnings) is expect_warning, result.warnings


def _darken(sample, factor: float = 0.2):
    """(x - 127) / 128 undone, pixels scaled by `factor`, redone."""
    from trimtab.data.dataset import Sample

    pixels = sample.inputs["input"] * 128.0 + 127.0
    darker = ((pixels * factor) - 127.0) / 128.0
    return Sample({"input": darker.astype(np.float32)}, sample.label, sample.source)
