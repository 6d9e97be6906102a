"""Fixtures for calibration tests: tiny ONNX models built in code and a stand-in Dataset."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trimtab.data.dataset import Batch
from trimtab.load.model import Model


class StandInDataset:
    """The slice of trimtab.data.Dataset that calibration uses; counts passes over the data."""

    def __init__(self, arrays: dict[str, np.ndarray], name: str = "stand-in") -> None:
        self.arrays = arrays
        self.name = name
        self.passes = 0
        self.batches_yielded = 0

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batches(self, batch_size: int):
        self.passes += 1
        for start in range(0, len(self), batch_size):
            self.batches_yielded += 1
            stop = min(start + batch_size, len(self))
            yield Batch(
                inputs={k: v[start:stop] for k, v in self.arrays.items()},
                labels=None,
                sources=[f"{self.name}#{i}" for i in range(start, stop)],
            )

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.arrays):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(self.arrays[key]).tobytes())
        return digest.hexdigest()


def make_model(proto: onnx.ModelProto, name: str = "tiny") -> Model:
    """A Model without the load stage: checked and shape-inferred, hashed like load does."""
    onnx.checker.check_model(proto)
    proto = onnx.shape_inference.infer_shapes(proto)
    return Model(
        proto=proto,
        sha256=hashlib.sha256(proto.SerializeToString()).hexdigest(),
        name=name,
        input_names=tuple(i.name for i in proto.graph.input),
        output_names=tuple(o.name for o in proto.graph.output),
    )


def conv_relu_matmul(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> Relu -> Flatten -> MatMul -> Add -> y[N,5]; plus a float tensor
    computed only from x's shape (Shape -> Cast -> ReduceProd), which is not an activation."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((256, 5)).astype(np.float32) * 0.1, "W2"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "B2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Flatten", ["relu"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "W2"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "B2"], ["y"], name="add"),
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
        helper.make_node("Cast", ["x_shape"], ["x_shape_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("ReduceProd", ["x_shape_f"], ["numel"], name="numel", keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_relu_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5]),
            helper.make_tensor_value_info("numel", TensorProto.FLOAT, []),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def masked_attention(vocab: int = 11, dim: int = 6) -> onnx.ModelProto:
    """Token ids + mask (int64) -> embedding -> self-attention with an additive mask of
    (1 - mask) * -3.4e38, as exported transformers do."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "E"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(-3.4e38, np.float32), "big_neg"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["emb"]),
        helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["emb", "emb_t"], ["scores"]),
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mask_f"], ["inv"]),
        helper.make_node("Mul", ["inv", "big_neg"], ["neg"]),
        helper.make_node("Unsqueeze", ["neg", "axis1"], ["neg3"]),
        helper.make_node("Add", ["scores", "neg3"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "emb"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "masked_attention",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "L"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", "L"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "L", dim])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture
def cnn_model() -> Model:
    return make_model(conv_relu_matmul(), "cnn")


@pytest.fixture
def image_data() -> StandInDataset:
    rng = np.random.default_rng(2)
    return StandInDataset({"x": rng.standard_normal((10, 3, 8, 8)).astype(np.float32)}, "img")
