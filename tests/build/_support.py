"""Tiny models and a min/max range helper for the build tests (calibration proper lives in
trimtab.calibrate; these tests must not depend on it)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from trimtab.calibrate.ranges import TensorRange
from trimtab.load.model import Model



IR_VERSION = 8  # what every ONNX Runtime in use reads (the GPU machine's 1.30 refuses onnx's newest default, 14)


def make_model(graph, opset: int) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION
    return model

def as_model(proto: onnx.ModelProto, name: str = "tiny") -> Model:
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto, full_check=True)
    inits = {init.name for init in proto.graph.initializer}
    return Model(proto=proto, sha256=hashlib.sha256(proto.SerializeToString()).hexdigest(), name=name,
                 input_names=tuple(v.name for v in proto.graph.input if v.name not in inits),
                 output_names=tuple(v.name for v in proto.graph.output))


def session(proto: onnx.ModelProto, *, optimized_path: str | None = None, optimize: bool = True):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(proto).run(None, feeds)


def minmax_ranges(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, TensorRange]:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    known = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(v for v in exposed.graph.value_info
                                if v.type.tensor_type.elem_type == TensorProto.FLOAT and v.name not in known)
    sess = session(exposed, optimize=False)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    values.update(feeds)
    return {name: TensorRange(float(np.abs(v).max()), float(v.min()), float(v.max()))
            for name, v in values.items() if v.dtype == np.float32}


def _init(rng, name, shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def residual_cnn(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv+Relu -> Conv -> Add(residual) -> Relu -> MaxPool -> Conv -> Clip(0,6)
    -> GlobalAveragePool -> Flatten -> Gemm(transB) -> y[N,5]. Covers the ResNet/EfficientNet
    patterns the int8 builder must fuse."""
    rng = np.random.default_rng(seed)
    inits = [
        _init(rng, "w1", (8, 3, 3, 3)), _init(rng, "b1", (8,), 0.1),
        _init(rng, "w2", (8, 8, 3, 3), 0.15), _init(rng, "b2", (8,), 0.1),
        _init(rng, "w3", (16, 8, 1, 1)), _init(rng, "b3", (16,), 0.1),
        _init(rng, "wfc", (5, 16)), _init(rng, "bfc", (5,), 0.1),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Clip", ["c3", "zero", "six"], ["r3"], name="relu6"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wfc", "bfc"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "residual_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return make_model(graph, 13)


def mlp_with_mask(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,16] -> MatMul(W1) -> Add(b) -> Relu -> MatMul(W2) -> Add(mask) -> Softmax -> y;
    `mask` is a graph input holding 0 or -3.4e38 (sentinel-dominated: must not be quantized)."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "W1", (16, 32)), _init(rng, "bias1", (32,), 0.1), _init(rng, "W2", (32, 8))]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "bias1"], ["a1"], name="bias_add"),
        helper.make_node("Relu", ["a1"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "W2"], ["m2"], name="mm2"),
        helper.make_node("Add", ["m2", "mask"], ["scores"], name="mask_add"),
        helper.make_node("Softmax", ["scores"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "mlp_with_mask",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16]),
                               helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])], inits)
    return make_model(graph, 13)


def mask_feed(rng, batch: int = 2) -> np.ndarray:
    mask = np.zeros((batch, 4, 8), np.float32)
    mask[:, :, 6:] = -3.4e38
    return mask


def conv_transpose_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,5,5] -> ConvTranspose(W[4,6,3,3], bias) -> Relu -> y (weights' axis 1 is output)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("ConvTranspose", ["x", "W", "B"], ["t"], name="deconv", strides=[2, 2]),
             helper.make_node("Relu", ["t"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "deconv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_init(rng, "W", (4, 6, 3, 3)), _init(rng, "B", (6,), 0.1), _init(rng, "W2", (3, 6, 1, 1))])
    return make_model(graph, 13)


def fp16_risky_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,8] -> MatMul(W) -> Relu -> {Softmax, ReduceSum, Exp, Add(eps=1e-10), Mul(1e5)} plus
    an integer Shape path; outputs y (sum of the float branches) and n (the shape)."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "W", (8, 8)), _init(rng, "W2", (8, 8)),
             numpy_helper.from_array(np.array([1e-10], np.float32), "eps"),
             numpy_helper.from_array(np.array([1e5], np.float32), "big")]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="matmul"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("Softmax", ["r"], ["sm"], name="softmax", axis=-1),
        helper.make_node("ReduceSum", ["r"], ["rs"], name="reducesum", keepdims=1),
        helper.make_node("Exp", ["sm"], ["e"], name="exp"),
        helper.make_node("Add", ["r", "eps"], ["re"], name="add_eps"),
        helper.make_node("Mul", ["re", "big"], ["rb"], name="mul_big"),
        helper.make_node("MatMul", ["e", "W2"], ["m2"], name="matmul2"),
        helper.make_node("Add", ["m2", "rs"], ["t"], name="add_sum"),
        helper.make_node("Add", ["t", "rb"], ["y"], name="add_out"),
        helper.make_node("Shape", ["m2"], ["n"], name="shape"),
    ]
    graph = helper.make_graph(nodes, "fp16_risky",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8]),
                               helper.make_tensor_value_info("n", TensorProto.INT64, [2])], inits)
    return make_model(graph, 13)


def tensor_names(proto: onnx.ModelProto) -> set[str]:
    names = {v.name for v in proto.graph.input} | {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        names.update(node.output)
    return names


def swish_concat_model(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv -> {Sigmoid, Mul (swish)} -> Concat(swish, conv) -> AveragePool -> Conv -> y:
    the non-conv ops the ort-cpu flavour quantizes in place."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
        helper.make_node("Mul", ["c", "s"], ["m"], name="swish"),
        helper.make_node("Concat", ["m", "c"], ["cat"], name="concat", axis=1),
        helper.make_node("AveragePool", ["cat"], ["p"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(nodes, "swish_concat",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_init(rng, "w1", (4, 3, 3, 3)), _init(rng, "b1", (4,), 0.1), _init(rng, "w2", (5, 8, 1, 1))])
    return make_model(graph, 13)


def encoder_block(seed: int = 0, dim: int = 16, hidden: int = 32) -> onnx.ModelProto:
    """One BERT-style encoder layer as transformers export it: x[N,L,D] and an additive mask
    `mask`[N,1,L] (0 or -3.4e38) -> LayerNorm (one outlier channel, gamma 12) -> Q/K/V MatMul +
    bias Add -> scores MatMul(q, k^T) -> Mul(1/sqrt(D)) -> Add(mask) -> Softmax -> MatMul(probs, v)
    -> out MatMul + bias -> residual Add -> LayerNorm -> FFN1 MatMul + bias -> GELU (Div, Erf,
    Add, Mul, Mul 0.5) -> FFN2 MatMul + bias -> residual Add -> y."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(dim, np.float32)
    gamma[3] = 12.0  # the LayerNorm outlier channel real encoders have
    inits = [numpy_helper.from_array(gamma, "ln1_g"), numpy_helper.from_array(np.zeros(dim, np.float32), "ln1_b"),
             numpy_helper.from_array(np.ones(dim, np.float32), "ln2_g"),
             numpy_helper.from_array(np.zeros(dim, np.float32), "ln2_b"),
             numpy_helper.from_array(np.array(1 / np.sqrt(dim), np.float32), "inv_sqrt_d"),
             numpy_helper.from_array(np.array(np.sqrt(2), np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    for name, shape in (("Wq", (dim, dim)), ("Wk", (dim, dim)), ("Wv", (dim, dim)), ("Wo", (dim, dim)),
                        ("W1", (dim, hidden)), ("W2", (hidden, dim))):
        inits += [_init(rng, name, shape), _init(rng, f"{name}_b", (shape[1],), 0.1)]

    def mm(name, a, w):  # MatMul + bias Add, bias first, as the exporter writes it
        return [helper.make_node("MatMul", [a, w], [f"{name}_mm"], name=name),
                helper.make_node("Add", [f"{w}_b", f"{name}_mm"], [f"{name}_out"], name=f"{name}_bias")]

    nodes = [helper.make_node("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["ln1"], name="ln1", axis=-1)]
    nodes += mm("q", "ln1", "Wq") + mm("k", "ln1", "Wk") + mm("v", "ln1", "Wv")
    nodes += [
        helper.make_node("Transpose", ["k_out"], ["k_t"], name="k_transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q_out", "k_t"], ["scores"], name="scores"),
        helper.make_node("Mul", ["scores", "inv_sqrt_d"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v_out"], ["context"], name="context"),
    ]
    nodes += mm("o", "context", "Wo")
    nodes += [helper.make_node("Add", ["o_out", "ln1"], ["res1"], name="residual1"),
              helper.make_node("LayerNormalization", ["res1", "ln2_g", "ln2_b"], ["ln2"], name="ln2", axis=-1)]
    nodes += mm("ffn1", "ln2", "W1")
    nodes += [helper.make_node("Div", ["ffn1_out", "sqrt2"], ["g_div"], name="gelu_div"),
              helper.make_node("Erf", ["g_div"], ["g_erf"], name="gelu_erf"),
              helper.make_node("Add", ["g_erf", "one"], ["g_add"], name="gelu_add"),
              helper.make_node("Mul", ["ffn1_out", "g_add"], ["g_mul"], name="gelu_mul"),
              helper.make_node("Mul", ["g_mul", "half"], ["gelu"], name="gelu_half")]
    nodes += mm("ffn2", "gelu", "W2")
    nodes += [helper.make_node("Add", ["ffn2_out", "ln2"], ["y"], name="residual2")]
    graph = helper.make_graph(nodes, "encoder_block",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L", dim]),
                               helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, "L"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L", dim])], inits)
    return make_model(graph, 17)


def multi_head_attention_block(seed: int = 0, heads: int = 2, dim: int = 32) -> onnx.ModelProto:
    """BERT's self-attention with several heads, as transformers export it: x[N,L,dim] and an
    additive mask `mask`[N,1,1,L] -> Q/K/V MatMul + bias -> Reshape [N, L, heads, dim/heads] ->
    Transpose [0, 2, 1, 3] (k: [0, 2, 3, 1]) -> MatMul(q, kT) -> Mul(1/sqrt(d)) -> Add(mask) ->
    Softmax -> MatMul(probs, v) -> Transpose [0, 2, 1, 3] -> Reshape [N, L, dim] -> out MatMul +
    bias -> residual Add -> y."""
    rng = np.random.default_rng(seed)
    head_dim = dim // heads
    inits = [numpy_helper.from_array(np.array([0, 0, heads, head_dim], np.int64), "heads_shape"),
             numpy_helper.from_array(np.array([0, 0, dim], np.int64), "merged_shape"),
             numpy_helper.from_array(np.array(1 / np.sqrt(head_dim), np.float32), "inv_sqrt_d")]
    for name in ("Wq", "Wk", "Wv", "Wo"):
        inits += [_init(rng, name, (dim, dim)), _init(rng, f"{name}_b", (dim,), 0.1)]
    nodes = []
    for name in ("q", "k", "v"):
        w = f"W{name}"
        nodes += [helper.make_node("MatMul", ["x", w], [f"{name}_mm"], name=name),
                  helper.make_node("Add", [f"{w}_b", f"{name}_mm"], [f"{name}_out"], name=f"{name}_bias"),
                  helper.make_node("Reshape", [f"{name}_out", "heads_shape"], [f"{name}_heads"], name=f"{name}_reshape"),
                  helper.make_node("Transpose", [f"{name}_heads"], [f"{name}_t"], name=f"{name}_transpose",
                                   perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3])]
    nodes += [
        helper.make_node("MatMul", ["q_t", "k_t"], ["scores"], name="scores"),
        helper.make_node("Mul", ["scores", "inv_sqrt_d"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v_t"], ["context"], name="context"),
        helper.make_node("Transpose", ["context"], ["context_t"], name="context_transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merged_shape"], ["merged"], name="merge_heads"),
        helper.make_node("MatMul", ["merged", "Wo"], ["o_mm"], name="o"),
        helper.make_node("Add", ["Wo_b", "o_mm"], ["o_out"], name="o_bias"),
        helper.make_node("Add", ["o_out", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(nodes, "multi_head_attention",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L", dim]),
                               helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, 1, "L"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L", dim])], inits)
    return make_model(graph, 17)


def multi_head_feeds(rng, batch: int = 4, length: int = 10, dim: int = 32) -> dict[str, np.ndarray]:
    """Inputs for `multi_head_attention_block`: the last three keys of every odd sample are padding."""
    mask = np.zeros((batch, 1, 1, length), np.float32)
    mask[1::2, ..., -3:] = np.finfo(np.float32).min
    return {"x": rng.standard_normal((batch, length, dim)).astype(np.float32), "mask": mask}


def encoder_feeds(rng, batch: int = 4, length: int = 6, dim: int = 16) -> dict[str, np.ndarray]:
    """Inputs for `encoder_block`: the last two keys of every odd sample are padding."""
    mask = np.zeros((batch, 1, length), np.float32)
    mask[1::2, :, -2:] = np.finfo(np.float32).min
    return {"x": rng.standard_normal((batch, length, dim)).astype(np.float32), "mask": mask}


def channel_ranges(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], names) -> dict:
    """Per-channel min/max (last axis) of `names` from one unoptimised run, as calibration records them."""
    from trimtab.calibrate.histogram import ChannelRange

    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    known = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in known)
    sess = session(exposed, optimize=False)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    result = {}
    for name in names:
        result[name] = ChannelRange(name, values[name].shape[-1])
        result[name].update(values[name])
    return result
