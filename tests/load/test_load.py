import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import conv_bn_relu_model
from trimtab.errors import InvalidModelError
from trimtab.load import load_model


def _run(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_batchnorm_is_folded_and_numerics_kept(tiny_model):
    model = load_model(tiny_model)
    ops = [node.op_type for node in model.proto.graph.node]
    assert "BatchNormalization" not in ops
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(model.proto, x), _run(tiny_model, x), rtol=1e-4, atol=1e-5)


def test_sha256_is_stable_and_tracks_weights():
    first = load_model(conv_bn_relu_model(seed=0))
    again = load_model(conv_bn_relu_model(seed=0))
    other = load_model(conv_bn_relu_model(seed=1))
    assert first.sha256 == again.sha256
    assert first.sha256 != other.sha256
    assert len(first.sha256) == 64


def test_old_opset_is_upgraded_to_13():
    model = load_model(conv_bn_relu_model(opset=11))
    opsets = {entry.domain: entry.version for entry in model.proto.opset_import}
    assert opsets[""] >= 13
    assert set(opsets) <= {"", "ai.onnx"}


def test_inputs_and_dynamic_batch_are_reported(tiny_model):
    model = load_model(tiny_model)
    assert model.input_names == ("x",)
    assert model.output_names == ("y",)
    assert model.input_shapes()["x"] == ["N", 3, 8, 8]


def test_file_round_trip(tmp_path, tiny_model):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_model, path)
    model = load_model(path)
    assert model.name == "m"
    assert model.path == path


def test_truncated_file_is_a_clear_error(tmp_path, tiny_model):
    path = tmp_path / "cut.onnx"
    data = tiny_model.SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="cut.onnx") as info:
        load_model(path)
    assert info.value.hint


def test_non_onnx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "photo.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(InvalidModelError, match="photo.onnx"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidModelError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")


def _with_external_weight(tmp_path, location):
    model = conv_bn_relu_model()
    weight = model.graph.initializer[0]
    weight.data_location = onnx.TensorProto.EXTERNAL
    del weight.external_data[:]
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_model_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 432)
    path = _with_external_weight(tmp_path, location)
    with pytest.raises(InvalidModelError, match="outside the model folder"):
        load_model(path)


def test_external_data_symlink_out_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 432)
    path = _with_external_weight(tmp_path, "link.bin")
    os.symlink(tmp_path / "secret.bin", path.parent / "link.bin")
    with pytest.raises(InvalidModelError, match="outside the model folder"):
        load_model(path)


def test_external_data_inside_folder_loads(tmp_path):
    model = conv_bn_relu_model()
    x = np.ones((1, 3, 8, 8), np.float32)
    expected = _run(model, x)
    path = tmp_path / "ext" / "m.onnx"
    path.parent.mkdir()
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (path.parent / "weights.bin").stat().st_size > 0
    loaded = load_model(path)
    np.testing.assert_allclose(_run(loaded.proto, x), expected, rtol=1e-4, atol=1e-5)


def test_non_float_inputs_are_accepted():
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"], name="gather")],
        "ids",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", "S", 4])],
        [table],
    )
    model = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert model.input_dtypes()["ids"] == np.int64


def test_torch_module_is_exported_with_a_dynamic_batch():
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    module = Tiny().eval()
    model = load_model(module, example_inputs={"image": torch.randn(1, 3, 8, 8)})
    assert model.input_names == ("image",)
    assert not isinstance(model.input_shapes()["image"][0], int)  # batch axis is dynamic
    assert "BatchNormalization" not in {node.op_type for node in model.proto.graph.node}
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_torch_module_without_example_inputs_is_a_clear_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidModelError, match="example inputs"):
        load_model(torch.nn.Linear(2, 2))
