"""GpuBackend's lifecycle, build-time errors, fusions, constant folding and the engine cache
(on the CPU here; the same code runs on CUDA)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

from tests.backends.gpu._support import F32, model, reference, rel_error, run_gpu
from tests.build._support import as_model, encoder_block, encoder_feeds, minmax_ranges, residual_cnn
from tests.conftest import conv_bn_relu_model
from trimtab.backends import get_backend
from trimtab.backends.gpu import GpuBackend, UnsupportedOpError
from trimtab.errors import InvalidDataError, InvalidModelError
from trimtab.measure.metrics import sqnr_db

X = np.random.default_rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32)


def test_an_unknown_op_is_a_build_error_naming_op_and_node():
    proto = model([helper.make_node("Relu", ["x"], ["r"], name="ok"), helper.make_node("Einsum", ["r"], ["y"], name="my_einsum",
                                                                                           equation="ij->ji")],
                  [("x", F32, [2, 3])], [("y", F32, None)])
    backend = GpuBackend(proto, cache=False)
    with pytest.raises(UnsupportedOpError, match="Einsum node 'my_einsum'") as info:
        backend.prepare()  # before any inference
    assert isinstance(info.value, InvalidModelError) and info.value.hint


def test_an_unsupported_form_of_a_known_op_fails_when_the_profile_is_built():
    proto = model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="cubic_up", mode="cubic")],
                  [("x", F32, [1, 1, 4, 4])], [("y", F32, None)], [("s", np.array([1, 1, 2, 2], np.float32))])
    with GpuBackend(proto, cache=False) as backend, pytest.raises(UnsupportedOpError, match="Resize node 'cubic_up'.*mode=cubic"):
        backend.build({"x": (1, 1, 4, 4)})


def test_batch_norm_folds_into_the_conv_and_relu_fuses():
    with GpuBackend(conv_bn_relu_model(), cache=False) as backend:
        info = backend.build({"x": (2, 3, 8, 8)})
        steps = backend.engine({"x": (2, 3, 8, 8)}).plan.steps
    assert [s.op for s in steps] == ["trimtab.Conv"] and steps[0].fused == ["bn", "relu"]
    assert info.notes["fusions"] == {"batch_norm_folded": 1, "conv": 1}


def test_residual_add_and_relu_fuse_into_the_conv_and_results_match():
    proto = residual_cnn()
    with GpuBackend(proto, cache=False) as backend:
        got = backend.infer({"x": X})["y"]
        ops = [s.op for s in backend.engine({"x": X.shape}).plan.steps]
    assert ops.count("trimtab.Conv") == 3 and "Add" not in ops and "Relu" not in ops and ops[-1] == "trimtab.Linear"
    assert rel_error(got, reference(proto, {"x": X})["y"]) < 1e-5


def test_encoder_shape_ops_fold_and_gelu_fuses_into_the_linear():
    proto = encoder_block()
    feeds = encoder_feeds(np.random.default_rng(0))
    with GpuBackend(proto, cache=False) as backend:
        got = backend.infer(feeds)["y"]
        plan = backend.engine({k: v.shape for k, v in feeds.items()}).plan
    assert plan.notes["fusions"]["gelu"] == 1 and not {"Erf", "Div"} & {s.op for s in plan.steps}
    assert rel_error(got, reference(proto, feeds)["y"]) < 1e-5


def test_each_batch_size_gets_its_own_engine():
    with GpuBackend(residual_cnn(), cache=False) as backend:
        a, b = backend.infer({"x": X[:1]})["y"], backend.infer({"x": X})["y"]
        assert len(backend.builds) == 2
        np.testing.assert_allclose(a, b[:1], rtol=1e-5, atol=1e-6)


def test_inputs_are_checked_by_the_base_class():
    with get_backend("gpu", residual_cnn(), cache=False) as backend:
        assert backend.name == "gpu" and backend.input_names == ["x"] and backend.output_names == ["y"]
        with pytest.raises(InvalidDataError, match="dtype"):
            backend.infer({"x": X.astype(np.float64)})


def test_engine_cache_hit_is_used_and_gives_the_same_outputs(tmp_path):
    proto = residual_cnn()
    with GpuBackend(proto, cache_dir=tmp_path) as cold:
        first = cold.infer({"x": X})["y"]
    with GpuBackend(proto, cache_dir=tmp_path) as warm:
        second = warm.infer({"x": X})["y"]
    assert not cold.builds[0].from_cache and warm.builds[0].from_cache
    np.testing.assert_array_equal(first, second)
    (entry,) = list(tmp_path.iterdir())
    key = json.loads((entry / "key.json").read_text())
    assert set(key) >= {"artifact_sha256", "device", "profile", "torch", "triton"}
    assert key["profile"] == {"x": [4, 3, 8, 8]}


def test_engine_cache_holds_only_tensors_and_json(tmp_path):
    import torch

    with GpuBackend(residual_cnn(), cache_dir=tmp_path) as backend:
        backend.build({"x": (2, 3, 8, 8)})
    (entry,) = list(tmp_path.iterdir())
    constants = torch.load(entry / "constants.pt", weights_only=True)
    assert constants and all(isinstance(v, torch.Tensor) for v in constants.values())


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    proto = residual_cnn()
    with GpuBackend(proto, cache_dir=tmp_path) as backend:
        backend.build({"x": (2, 3, 8, 8)})
    (entry,) = list(tmp_path.iterdir())
    (entry / "constants.pt").write_bytes(b"not a tensor file")
    with GpuBackend(proto, cache_dir=tmp_path) as backend:
        assert not backend.build({"x": (2, 3, 8, 8)}).from_cache
        assert rel_error(backend.infer({"x": X[:2]})["y"], reference(proto, {"x": X[:2]})["y"]) < 1e-5


def test_another_artifact_misses_the_cache(tmp_path):
    with GpuBackend(residual_cnn(seed=0), cache_dir=tmp_path) as a, GpuBackend(residual_cnn(seed=1), cache_dir=tmp_path) as b:
        a.build({"x": (2, 3, 8, 8)})
        assert not b.build({"x": (2, 3, 8, 8)}).from_cache
    assert len(list(tmp_path.iterdir())) == 2


def test_fp16_artifact_runs_in_fp16_within_1e_2():
    from trimtab.build import build_fp16

    artifact = build_fp16(as_model(residual_cnn()))
    got, want = run_gpu(artifact.proto, {"x": X})["y"], reference(artifact.proto, {"x": X})["y"]
    assert rel_error(got, want) < 1e-2


@pytest.mark.parametrize("flavour", ["ort-cpu", "tensorrt"])
def test_int8_qdq_artifact_matches_onnx_runtime(flavour):
    from trimtab.build import build_int8

    cnn = as_model(residual_cnn())
    artifact = build_int8(cnn, minmax_ranges(cnn.proto, {"x": X}), flavour)
    x = np.random.default_rng(9).standard_normal((16, 3, 8, 8)).astype(np.float32)
    got = run_gpu(artifact.proto, {"x": x})["y"]
    for optimize in (False, True):  # the Q/DQ reference semantics, and ONNX Runtime's integer kernels
        want = reference(artifact.proto, {"x": x}, optimize=optimize)["y"]
        assert sqnr_db(got, want) >= 30.0
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99


def test_importing_the_package_does_not_import_torch():
    code = "import sys, trimtab.backends, trimtab.backends.gpu; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_encoder_attention_qkv_and_half_layer_norm_fuse_and_match_onnx_runtime(precision):
    """fp32 and fp16 against ONNX Runtime on the same file. ONNX Runtime's CPU provider has no
    bf16 kernels, so bf16 is held to the fp32 file, within 3e-2: bf16 steps are 8x fp16's."""
    from trimtab.build import build_bf16, build_fp16

    source = encoder_block()
    proto = {"fp32": source, "fp16": build_fp16(as_model(source)).proto if precision == "fp16" else None,
             "bf16": build_bf16(as_model(source)).proto if precision == "bf16" else None}[precision]
    feeds = encoder_feeds(np.random.default_rng(0))
    with GpuBackend(proto, cache=False) as backend:
        got = backend.infer(feeds)["y"]
        plan = backend.engine({k: v.shape for k, v in feeds.items()}).plan
    fusions = plan.notes["fusions"]
    assert fusions["attention"] == 1 and fusions["qkv"] == 1
    assert not {"Softmax", "MatMul"} & {s.op for s in plan.steps}
    if precision != "fp32":  # the Casts the builder put around LayerNorm and Softmax are gone
        assert fusions["layer_norm"] >= 1
        assert sum(s.op == "Cast" for s in plan.steps) < sum(n.op_type == "Cast" for n in proto.graph.node) - 3
    if precision == "bf16":
        want = reference(source, feeds)["y"]
        assert 4e-3 < rel_error(got, want) < 3e-2  # (fp16 gives 1.6e-3: it really ran in bf16)
    else:
        assert rel_error(got, reference(proto, feeds)["y"]) < (1e-5 if precision == "fp32" else 1e-2)


def test_a_residual_branch_conv_gives_its_bias_to_the_conv_it_is_added_to():
    """ResNet's downsampling: relu(conv_a(x) + conv_b(x)); conv_b's bias moves into conv_a's fused
    epilogue, so conv_b runs without a bias pass. Same outputs as ONNX Runtime."""
    rng = np.random.default_rng(5)
    inits = [(n, rng.standard_normal(s).astype(np.float32)) for n, s in
             (("wa", (4, 3, 3, 3)), ("ba", (4,)), ("wb", (4, 3, 1, 1)), ("bb", (4,)))]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb", "bb"], ["b"], name="conv_b"),
             helper.make_node("Add", ["a", "b"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["y"], name="relu")]
    proto = model(nodes, [("x", F32, [2, 3, 8, 8])], [("y", F32, None)], inits)
    with GpuBackend(proto, cache=False, device="cpu") as backend:
        got = backend.infer({"x": X[:2]})["y"]
        steps = backend.engine({"x": (2, 3, 8, 8)}).plan.steps
    biases = {s.name: len(s.inputs) > 2 and bool(s.inputs[2]) for s in steps if s.op == "trimtab.Conv"}
    assert biases == {"conv_a": True, "conv_b": False}
    assert rel_error(got, reference(proto, {"x": X[:2]})["y"]) < 1e-5
