"""trimtab.load.torch_export.export_module on tiny modules (kept beside the examples, its users)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from trimtab.errors import InvalidModelError
from trimtab.load import torch_export
from trimtab.load.torch_export import export_module


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3))


class MaskedMean(torch.nn.Module):
    """Token embeddings averaged over a mask: needs the dynamic sequence axis."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)

    def forward(self, ids, mask):
        weights = mask.unsqueeze(-1).float()
        return (self.embed(ids) * weights).sum(1) / weights.sum(1)


class IgnoresInput(torch.nn.Module):
    def forward(self, x, unused):
        return x * 2


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_has_dynamic_batch_and_matches_torch_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    net = ConvNet().train()  # export must switch to eval (dropout off, BN running stats) ...
    path = export_module(net, {"input": torch.zeros(1, 3, 8, 8)}, tmp_path / "m.onnx", output_names=["out"])
    assert net.training  # ... and give the module back as it came
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version == 17
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    got = _session(path).run(None, {"input": x})[0]
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sequence_inputs_get_a_dynamic_sequence_axis(tmp_path):
    net = MaskedMean()
    example = {"ids": torch.tensor([[1, 2, 3], [4, 5, 0]]), "mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    path = export_module(net, example, tmp_path / "t.onnx", output_names=["emb"], sequence_inputs=["ids", "mask"])
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    ids = np.array([[1, 2, 3, 4, 5, 6, 7]], dtype=np.int64)
    got = _session(path).run(None, {"ids": ids, "mask": np.ones_like(ids)})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(ids), torch.ones(1, 7, dtype=torch.int64)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_failed_export_is_an_invalid_model_error_and_writes_nothing(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot run")

    target = tmp_path / "broken.onnx"
    with pytest.raises(InvalidModelError, match="could not export Broken"):
        export_module(Broken(), {"x": torch.zeros(1)}, target, output_names=["y"])
    assert not target.exists()


def test_an_unused_input_is_reported(tmp_path):
    with pytest.raises(InvalidModelError, match="expected"):
        export_module(
            IgnoresInput(),
            {"x": torch.zeros(1, 2), "unused": torch.zeros(1, 2)},
            tmp_path / "u.onnx",
            output_names=["y"],
        )


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(InvalidModelError):
        export_module(ConvNet(), {}, tmp_path / "a.onnx", output_names=["y"])
    with pytest.raises(InvalidModelError):
        export_module(ConvNet(), {"input": torch.zeros(1, 3, 8, 8)}, tmp_path / "b.onnx", output_names=[])
    with pytest.raises(InvalidModelError):
        export_module(
            ConvNet(),
            {"input": torch.zeros(1, 3, 8, 8)},
            tmp_path / "c.onnx",
            output_names=["y"],
            sequence_inputs=["ids"],
        )


@pytest.mark.slow
def test_dynamo_exporter_takes_over_when_the_legacy_one_fails(tmp_path, monkeypatch):
    """The path taken when a future torch drops (or breaks) the TorchScript exporter."""
    pytest.importorskip("onnxscript")

    def no_legacy(*args, **kwargs):
        raise TypeError("export() got an unexpected keyword argument 'dynamo'")

    monkeypatch.setattr(torch_export, "_export_legacy", no_legacy)
    torch.manual_seed(0)
    net = ConvNet().eval()
    path = export_module(net, {"input": torch.zeros(2, 3, 8, 8)}, tmp_path / "d.onnx", output_names=["out"])
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    got = _session(path).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
