"""`fuse_mask.narrow_masks`: BERT's padding mask, built at [N, 1, L, L] from an [N, 1, 1, L]
padding row (as transformers' export writes it), is computed at [N, 1, 1, L] and expanded as a
view; outputs match ONNX Runtime, and masks that really vary along queries are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.backends.gpu._support import DEVICES, reference, rel_error
from tests.build._support import multi_head_attention_block, multi_head_feeds

torch = pytest.importorskip("torch")

N, L = 4, 10


def _with_padding_mask(query_term: np.ndarray, mask_is_output: bool = False) -> onnx.ModelProto:
    """multi_head_attention_block whose additive mask is computed from `padding` [N, L] (1 keep,
    0 pad): Cast(bool) -> Unsqueeze [N, 1, 1, L] -> And(query_term [1, 1, L, 1 or L]) ->
    Expand [N, 1, L, L] -> Where(., 0, float min)."""
    proto = multi_head_attention_block()
    graph = proto.graph
    graph.input.remove(next(i for i in graph.input if i.name == "mask"))
    graph.input.append(helper.make_tensor_value_info("padding", TensorProto.INT64, [N, L]))
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1, 2], np.int64), "pad_axes"),
        numpy_helper.from_array(query_term, "query_term"),
        numpy_helper.from_array(np.array([N, 1, L, L], np.int64), "full_shape"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "lowest")])
    chain = [
        helper.make_node("Cast", ["padding"], ["keep"], name="keep", to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["keep", "pad_axes"], ["keep_row"], name="keep_row"),
        helper.make_node("And", ["query_term", "keep_row"], ["allowed"], name="allowed"),
        helper.make_node("Expand", ["allowed", "full_shape"], ["allowed_full"], name="expand"),
        helper.make_node("Where", ["allowed_full", "zero", "lowest"], ["mask"], name="mask_values")]
    for node in reversed(chain):
        graph.node.insert(0, node)
    if mask_is_output:
        graph.output.append(helper.make_tensor_value_info("allowed_full", TensorProto.BOOL, [N, 1, L, L]))
    return proto


def _feeds():
    feeds = multi_head_feeds(np.random.default_rng(0), batch=N, length=L)
    padding = np.ones((N, L), np.int64)
    padding[1::2, -3:] = 0
    return {"x": feeds["x"], "padding": padding}


def _run(proto, feeds, device):
    from trimtab.backends.gpu import GpuBackend

    with GpuBackend(proto, device=device, cache=False) as backend:
        got = backend.infer(feeds)
        plan = backend.engine({k: v.shape for k, v in feeds.items()}).plan
    return got, plan


def _mask_producer(plan):
    attention = next(s for s in plan.steps if s.op in ("trimtab.Attention", "trimtab.QKVAttention"))
    return next(s for s in plan.steps if attention.inputs[3] in s.outputs)


@pytest.mark.parametrize("device", DEVICES)
def test_a_padding_mask_is_computed_as_one_row_of_keys_and_expanded(device):
    proto, feeds = _with_padding_mask(np.ones((1, 1, L, 1), bool)), _feeds()
    got, plan = _run(proto, feeds, device)
    assert plan.notes["fusions"]["narrow_mask"] == 1
    expand = _mask_producer(plan)
    assert expand.op == "Expand" and plan.shapes[expand.inputs[0]] == [N, 1, 1, L]
    assert plan.shapes[expand.outputs[0]] == [N, 1, L, L]
    assert not any(s.op == "Expand" and s is not expand for s in plan.steps)  # the chain's became an Identity
    assert rel_error(got["y"], reference(proto, feeds)["y"]) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_a_mask_that_varies_along_queries_is_left_at_full_size(device):
    causal = np.tril(np.ones((L, L), bool))[None, None]  # [1, 1, L, L]: each query row differs
    proto, feeds = _with_padding_mask(causal), _feeds()
    got, plan = _run(proto, feeds, device)
    assert "narrow_mask" not in plan.notes["fusions"]
    assert _mask_producer(plan).op == "Where"
    assert rel_error(got["y"], reference(proto, feeds)["y"]) < 1e-5


def test_a_chain_tensor_read_elsewhere_is_left_alone():
    proto, feeds = _with_padding_mask(np.ones((1, 1, L, 1), bool), mask_is_output=True), _feeds()
    got, plan = _run(proto, feeds, "cpu")
    assert "narrow_mask" not in plan.notes["fusions"]
    want = reference(proto, feeds)
    assert rel_error(got["y"], want["y"]) < 1e-5
    assert np.array_equal(got["allowed_full"], want["allowed_full"])
