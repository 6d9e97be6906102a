"""Each op family on small graphs built in code: the gpu backend (on every available device)
against ONNX Runtime CPU on the same file. fp32 relative error < 1e-3 (TF32 is off)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.backends.gpu._support import DEVICES, F16, F32, I64, model, reference, rel_error, run_gpu

rng = np.random.default_rng(0)


def x(*shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, shape).astype(np.float32)


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=f"{op.lower()}_{outputs[0]}", **attrs)


def unary(op, data=None, **attrs):
    data = x(2, 3, 4) if data is None else data
    return model([node(op, ["x"], **attrs)], [("x", F32, list(data.shape))], [("y", F32, None)]), {"x": data}


def binary(op, a, b):
    return (model([node(op, ["a", "b"])], [("a", F32, list(a.shape)), ("b", F32, list(b.shape))], [("y", F32, None)]),
            {"a": a, "b": b})


def with_consts(nodes, feeds, inits, out_type=F32):
    inputs = [(n, F32 if v.dtype == np.float32 else I64, list(v.shape)) for n, v in feeds.items()]
    return model(nodes, inputs, [("y", out_type, None)], list(inits.items())), feeds


CASES = {
    # activations and elementwise math
    **{op: (lambda op=op: unary(op)) for op in ["Relu", "Sigmoid", "Tanh", "Erf", "Neg", "Abs", "Exp", "HardSwish", "Identity"]},
    "Sqrt": lambda: unary("Sqrt", x(2, 3, low=0.1)),
    "Log": lambda: unary("Log", x(2, 3, low=0.1)),
    "Reciprocal": lambda: unary("Reciprocal", x(2, 3, low=0.5)),
    "LeakyRelu": lambda: unary("LeakyRelu", alpha=0.2),
    "HardSigmoid": lambda: unary("HardSigmoid", alpha=0.25, beta=0.4),
    "Gelu": lambda: (model([node("Gelu", ["x"])], [("x", F32, [2, 5])], [("y", F32, None)], opset=20), {"x": x(2, 5)}),
    "Softmax": lambda: unary("Softmax", axis=1),
    "Clip": lambda: with_consts([node("Clip", ["x", "lo", "hi"])], {"x": x(2, 8)},
                                {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}),
    **{op: (lambda op=op: binary(op, x(2, 3, 4), x(3, 1, low=0.5))) for op in ["Add", "Sub", "Mul", "Div"]},
    "Pow": lambda: with_consts([node("Pow", ["x", "e"])], {"x": x(2, 3, low=0.1)}, {"e": np.array(3.0, np.float32)}),
    "Where": lambda: with_consts([node("Equal", ["i", "z"], ["c"]), node("Where", ["c", "x", "m"])],
                                 {"x": x(2, 5), "i": np.array([[0, 1, 0, 1, 1]] * 2, np.int64)},
                                 {"z": np.array(0, np.int64), "m": np.array(-1e4, np.float32)}),
    # normalisation, reductions
    "LayerNormalization": lambda: with_consts([node("LayerNormalization", ["x", "g", "b"], axis=-1, epsilon=1e-5)],
                                              {"x": x(2, 3, 8)}, {"g": x(8), "b": x(8)}),
    "BatchNormalization": lambda: with_consts([node("BatchNormalization", ["x", "s", "b", "m", "v"])], {"x": x(2, 4, 3, 3)},
                                              {"s": x(4), "b": x(4), "m": x(4), "v": x(4, low=0.5)}),
    "ReduceMean": lambda: unary("ReduceMean", x(2, 3, 4), axes=[-1], keepdims=1),
    "ReduceSum": lambda: with_consts([node("ReduceSum", ["x", "ax"], keepdims=0)], {"x": x(2, 3, 4)}, {"ax": np.array([1], np.int64)}),
    "ReduceMax": lambda: with_consts([node("ReduceMax", ["x"], axes=[0, 2], keepdims=1)], {"x": x(2, 3, 4)}, {}),
    # matrix products and convolutions
    "MatMul": lambda: with_consts([node("MatMul", ["x", "w"])], {"x": x(2, 3, 8)}, {"w": x(8, 5)}),
    "MatMul-dynamic": lambda: binary("MatMul", x(2, 3, 8), x(2, 8, 4)),
    "Gemm": lambda: with_consts([node("Gemm", ["x", "w", "c"], transB=1, alpha=0.5, beta=2.0)], {"x": x(3, 8)},
                                {"w": x(5, 8), "c": x(5)}),
    "Gemm-linear": lambda: with_consts([node("Gemm", ["x", "w", "c"], ["y0"], transB=1), node("Relu", ["y0"])],
                                       {"x": x(3, 8)}, {"w": x(5, 8), "c": x(5)}),
    "Conv": lambda: with_consts([node("Conv", ["x", "w", "b"], pads=[1, 0, 2, 1], strides=[2, 1])], {"x": x(2, 3, 9, 9)},
                                {"w": x(4, 3, 3, 3), "b": x(4)}),
    "Conv-same-depthwise": lambda: with_consts([node("Conv", ["x", "w"], auto_pad="SAME_UPPER", group=4, strides=[2, 2])],
                                               {"x": x(1, 4, 8, 8)}, {"w": x(4, 1, 3, 3)}),
    "Conv-residual-relu": lambda: with_consts([node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                                               node("Add", ["c", "x"], ["s"]), node("Relu", ["s"])],
                                              {"x": x(2, 4, 6, 6)}, {"w": x(4, 4, 3, 3), "b": x(4)}),
    "Conv-bn-relu6": lambda: with_consts([node("Conv", ["x", "w"], ["c"]), node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
                                          node("Clip", ["n", "lo", "hi"])], {"x": x(2, 3, 5, 5)},
                                         {"w": x(4, 3, 1, 1), "s": x(4), "b": x(4), "m": x(4), "v": x(4, low=0.5),
                                          "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}),
    "ConvTranspose": lambda: with_consts([node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1],
                                               output_padding=[1, 1])], {"x": x(1, 4, 5, 5)}, {"w": x(4, 3, 3, 3), "b": x(3)}),
    # pooling, resize, pad
    "GlobalAveragePool": lambda: unary("GlobalAveragePool", x(2, 3, 5, 5)),
    "AveragePool": lambda: unary("AveragePool", x(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "MaxPool": lambda: unary("MaxPool", x(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1),
    "Resize-nearest": lambda: with_consts([node("Resize", ["x", "", "s"], mode="nearest", coordinate_transformation_mode="asymmetric",
                                                nearest_mode="floor")], {"x": x(1, 2, 3, 4)},
                                          {"s": np.array([1, 1, 2, 2], np.float32)}),
    "Resize-linear": lambda: with_consts([node("Resize", ["x", "", "", "sz"], mode="linear")], {"x": x(1, 2, 4, 4)},
                                         {"sz": np.array([1, 2, 7, 9], np.int64)}),
    "Pad-reflect": lambda: with_consts([node("Pad", ["x", "p"], mode="reflect")], {"x": x(1, 2, 4, 4)},
                                       {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}),
    "Pad-constant": lambda: with_consts([node("Pad", ["x", "p", "v"])], {"x": x(2, 3)},
                                        {"p": np.array([1, 0, 0, 2], np.int64), "v": np.array(1.5, np.float32)}),
    # shape and indexing (all folded at build time, per profile)
    "Reshape-shape-chain": lambda: with_consts(
        [node("Shape", ["x"], ["s"]), node("Gather", ["s", "i0"], ["n"], axis=0), node("Unsqueeze", ["n", "a0"], ["n1"]),
         node("Concat", ["n1", "m1"], ["shape"], axis=0), node("Reshape", ["x", "shape"])],
        {"x": x(3, 4, 5)}, {"i0": np.array(0, np.int64), "a0": np.array([0], np.int64), "m1": np.array([-1], np.int64)}),
    "Transpose-Flatten": lambda: (model([node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]), node("Flatten", ["t"], axis=2)],
                                        [("x", F32, [2, 3, 4, 5])], [("y", F32, None)]), {"x": x(2, 3, 4, 5)}),
    "Squeeze-Unsqueeze": lambda: with_consts([node("Unsqueeze", ["x", "a"], ["u"]), node("Squeeze", ["u", "b"])],
                                             {"x": x(2, 3)}, {"a": np.array([0, 3], np.int64), "b": np.array([0], np.int64)}),
    "Slice": lambda: with_consts([node("Slice", ["x", "st", "en", "ax", "sp"])], {"x": x(4, 6, 5)},
                                 {"st": np.array([1, -1], np.int64), "en": np.array([4, -7], np.int64),
                                  "ax": np.array([0, 1], np.int64), "sp": np.array([2, -2], np.int64)}),
    "Gather-embedding": lambda: with_consts([node("Gather", ["w", "ids"], axis=0)], {"ids": np.array([[0, 3, -1], [2, 2, 1]], np.int64)},
                                            {"w": x(5, 4)}),
    "Expand-ConstantOfShape-Range": lambda: with_consts(
        [node("Range", ["r0", "r1", "r2"], ["r"]), node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
         node("ConstantOfShape", ["cs"], ["z"], value=helper.make_tensor("v", F32, [1], [0.5])),
         node("Add", ["rf", "z"], ["e"]), node("Expand", ["e", "es"], ["big"]), node("Add", ["big", "x"])],
        {"x": x(2, 3, 4)}, {"r0": np.array(0, np.int64), "r1": np.array(4, np.int64), "r2": np.array(1, np.int64),
                            "cs": np.array([4], np.int64), "es": np.array([3, 1], np.int64)}),
    "Cast-fp16-roundtrip": lambda: (model([node("Cast", ["x"], ["h"], to=F16), node("Sigmoid", ["h"], ["s"]),
                                           node("Cast", ["s"], to=F32)], [("x", F32, [2, 4])], [("y", F32, None)]), {"x": x(2, 4)}),
    # quantization, per tensor and per axis, int8 and uint8
    "QDQ-uint8-per-tensor": lambda: with_consts([node("QuantizeLinear", ["x", "s", "z"], ["q"]), node("DequantizeLinear", ["q", "s", "z"])],
                                                {"x": x(2, 3, 4)}, {"s": np.array(0.02, np.float32), "z": np.array(128, np.uint8)}),
    "QDQ-int8-per-axis": lambda: with_consts([node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
                                              node("DequantizeLinear", ["q", "s", "z"], axis=1)],
                                             {"x": x(2, 3, 4)}, {"s": np.array([0.01, 0.02, 0.05], np.float32),
                                                                 "z": np.zeros(3, np.int8)}),
    "DQ-weight-conv": lambda: with_consts([node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0), node("Conv", ["x", "w"])],
                                          {"x": x(1, 3, 5, 5)}, {"wq": rng.integers(-127, 127, (4, 3, 3, 3)).astype(np.int8),
                                                                 "ws": np.array([0.01, 0.02, 0.03, 0.04], np.float32),
                                                                 "wz": np.zeros(4, np.int8)}),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnx_runtime(case, device):
    proto, feeds = CASES[case]()
    want = reference(proto, feeds)
    got = run_gpu(proto, feeds, device=device)
    for name, value in want.items():
        assert got[name].shape == value.shape, (name, got[name].shape, value.shape)
        assert got[name].dtype == value.dtype
        assert rel_error(got[name], value) < 1e-3, (case, rel_error(got[name], value))


def test_q_dq_rounds_half_to_even_like_onnx():
    """0.5 and 2.5 LSB round to 0 and 2 (banker's rounding), as ONNX QuantizeLinear specifies."""
    proto, feeds = with_consts([node("QuantizeLinear", ["x", "s", "z"], ["q"]), node("DequantizeLinear", ["q", "s", "z"])],
                               {"x": np.array([0.5, 1.5, 2.5, -0.5, 300.0], np.float32)},
                               {"s": np.array(1.0, np.float32), "z": np.array(0, np.int8)})
    np.testing.assert_array_equal(run_gpu(proto, feeds)["y"], [0.0, 2.0, 2.0, -0.0, 127.0])


def _conv_classifier(weights: dict, bf16: bool):
    """x[2,3,8,8] -> Conv+Relu -> GlobalAveragePool -> Flatten -> Gemm; with `bf16` the input and
    the weights are cast to bfloat16 (the Casts of weights fold into bf16 constants) and the result
    back to fp32, as a bf16 export computes."""
    nodes, names = [], {name: name for name in ("x", *weights)}
    if bf16:
        for name in names:
            nodes.append(node("Cast", [name], [f"{name}16"], to=TensorProto.BFLOAT16))
            names[name] = f"{name}16"
    nodes += [node("Conv", [names["x"], names["w"], names["b"]], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["r"]),
              node("GlobalAveragePool", ["r"], ["g"]), node("Flatten", ["g"], ["f"]),
              node("Gemm", ["f", names["wf"], names["bf"]], ["o" if bf16 else "y"], transB=1)]
    if bf16:
        nodes.append(node("Cast", ["o"], ["y"], to=TensorProto.FLOAT))
    return model(nodes, [("x", F32, [2, 3, 8, 8])], [("y", F32, None)], list(weights.items()))


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_graph_matches_its_fp32_twin(device):
    """The backend lowers bfloat16 graphs (ONNX Runtime's CPU provider has no bf16 Conv, so the
    reference is the same network in fp32): bf16 keeps 8 mantissa bits, so 2e-2 of the output."""
    feeds = {"x": x(2, 3, 8, 8)}
    weights = {"w": x(6, 3, 3, 3, low=-0.5, high=0.5), "b": x(6, low=-0.1, high=0.1),
               "wf": x(4, 6, low=-0.5, high=0.5), "bf": x(4, low=-0.1, high=0.1)}
    want = reference(_conv_classifier(weights, bf16=False), feeds)["y"]
    got = run_gpu(_conv_classifier(weights, bf16=True), feeds, device=device)["y"]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert 0 < rel_error(got, want) < 2e-2  # not bit-equal to fp32: it really ran in bf16
