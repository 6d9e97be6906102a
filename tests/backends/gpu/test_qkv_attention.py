"""The Q/K/V projection and the attention as one step (`trimtab.QKVAttention`): the plan rewrite on
every device, ONNX Runtime as the yardstick, and on CUDA the one-kernel path against the two
kernels it replaces (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.backends.gpu._support import DEVICES, needs_cuda, reference, rel_error
from tests.build._support import (as_model, encoder_block, encoder_feeds, minmax_ranges, multi_head_attention_block,
                                  multi_head_feeds)
from trimtab.backends.gpu import GpuBackend
from trimtab.measure.metrics import sqnr_db

torch = pytest.importorskip("torch")


def _artifact(block, feeds, precision: str):
    from trimtab.build import build_fp8, build_fp16, build_int8

    model = as_model(block)
    if precision == "fp16":
        return build_fp16(model).proto
    ranges = minmax_ranges(model.proto, feeds)
    if precision == "fp8":
        return build_fp8(model, ranges, method_name="minmax").proto
    return build_int8(model, ranges, "tensorrt", unquantized="fp16").proto


def _run(proto, feeds, device):
    with GpuBackend(proto, device=device, cache=False) as backend:
        got = backend.infer(feeds)["y"]
        info = backend.builds[-1]
        return got, backend.engine({k: v.shape for k, v in feeds.items()}).plan, info.notes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp16", "int8", "fp8"])
@pytest.mark.parametrize("heads", [2, 1])
def test_projection_and_attention_become_one_step_and_match_onnx_runtime(precision, heads, device):
    rng = np.random.default_rng(0)
    if heads == 1:  # the single-head 3-D form (no head views; k transposed by a Transpose [0, 2, 1])
        block, feeds = encoder_block(), encoder_feeds(rng, batch=8)
    else:
        block, feeds = multi_head_attention_block(heads=heads), multi_head_feeds(rng, batch=8)
    proto = _artifact(block, feeds, precision)
    got, plan, notes = _run(proto, feeds, device)
    fused = [s for s in plan.steps if s.op == "trimtab.QKVAttention"]
    assert len(fused) == plan.notes["fusions"]["qkv_attention"] == 1
    assert not any(s.op == "trimtab.Attention" for s in plan.steps)
    step = fused[0]
    assert step.attrs["heads"] == heads and step.attrs["rank"] == (3 if heads == 1 else 4)
    assert step.attrs["linear_op"] == ("trimtab.Linear" if precision == "fp16" else "trimtab.QLinear")
    want = reference(proto, feeds)["y"]
    if precision == "fp16":
        assert rel_error(got, want) < 1e-2
    else:
        assert sqnr_db(got, want) >= 30.0
        assert step.name in notes["layer_precisions"]  # the Q/K/V product is still reported per layer
    if device == "cuda":
        assert notes["kernel_choices"][step.name]["ran"] in ("fused", "separate")


def test_a_float32_projection_is_left_to_the_separate_kernels():
    """fp32 artifacts keep q, k, v in fp32 (SDPA without TF32): the one-kernel path is half-only."""
    feeds = multi_head_feeds(np.random.default_rng(0))
    got, plan, _ = _run(multi_head_attention_block(), feeds, "cpu")
    assert "qkv_attention" not in plan.notes["fusions"]
    assert rel_error(got, reference(multi_head_attention_block(), feeds)["y"]) < 1e-5


def _separate(x, w, col, bias, mask, heads, out_q, half=torch.float16):
    from trimtab.backends.gpu import attention_triton, lowbit

    b, s, _ = x.shape
    hidden = w.shape[0] // 3
    if col is None:
        y = torch.nn.functional.linear(x, w, bias)
    else:
        y = lowbit.qgemm(x, w, col, bias, None, half)
    q, k, v = (t.reshape(b, s, heads, hidden // heads).transpose(1, 2) for t in y.split(hidden, dim=-1))
    return attention_triton.attention(q, k, v, mask, None, out_q)


def _reference(x, w, col, bias, mask, heads):
    """The graph's arithmetic in float64: the projection rounded to fp16 (as it writes q, k, v), then
    softmax(q k^T / sqrt(d) + mask) v."""
    b, s, _ = x.shape
    hidden = w.shape[0] // 3
    y = x.double() @ w.double().t()
    if col is not None:
        y = y * col.double()
    y = (y + bias.double()).half().double()
    q, k, v = (t.reshape(b, s, heads, hidden // heads).transpose(1, 2) for t in y.split(hidden, dim=-1))
    scores = q @ k.transpose(-1, -2) / (hidden // heads) ** 0.5 + mask.double()
    return torch.softmax(scores, dim=-1) @ v


def _distance(got, want) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


@needs_cuda
@pytest.mark.parametrize("element", ["int8", "float8_e4m3fn", "float16"])
def test_the_one_kernel_path_matches_the_projection_then_the_attention(element):
    from trimtab.backends.gpu import lowbit
    from trimtab.backends.gpu.qkv_attention_triton import qkv_attention, supported

    element = getattr(torch, element)
    torch.manual_seed(0)
    for b, s, k, heads, d in [(4, 128, 768, 12, 64), (3, 77, 128, 4, 32), (2, 16, 64, 1, 64), (3, 64, 128, 2, 64)]:
        hidden = heads * d
        x = torch.randn(b, s, k, device="cuda", dtype=torch.float16)
        w = torch.randn(3 * hidden, k, device="cuda", dtype=torch.float16) / k ** 0.5 * 2
        bias = torch.randn(3 * hidden, device="cuda", dtype=torch.float16) * 0.1
        mask = torch.zeros(b, 1, 1, s, device="cuda", dtype=torch.float16)
        mask[-1, ..., s - 5:] = torch.finfo(torch.float16).min
        col, out_q = None, None
        if element != torch.float16:
            top = 127 if element == torch.int8 else lowbit.FP8_MAX
            x_scale, w_scale = float(x.abs().max()) / top, w.float().abs().amax(dim=1) / top
            x = lowbit.quantize(x, x_scale, element)
            w = lowbit.quantize_reference(w.float() / w_scale[:, None], 1.0, element).contiguous()
            col = (x_scale * w_scale).float().contiguous()
        want_float = _separate(x, w, col, bias, mask, heads, None)
        assert supported(x, w, heads, mask)
        got = qkv_attention(x, w, col, bias, (0, hidden, 2 * hidden), heads, mask, None, torch.float16)
        assert got.shape == want_float.shape == (b, heads, s, d)
        # float sums (fp8, fp16) add up in another order than the separate GEMM's tiles, so q and k
        # may differ by an fp16 step, which the softmax can widen: both paths are held to the same
        # float64 reference, the fused one no further from it than the separate one (or 2e-3)
        exact = _reference(x, w, col, bias, mask, heads)
        allowed = max(2 * _distance(want_float, exact), 2e-3)
        assert _distance(got, exact) <= allowed
        if element == torch.int8:  # integer sums: the same q, k, v, so the same output
            torch.testing.assert_close(got, want_float, rtol=2e-3, atol=2e-3)
        if element != torch.float16:  # the output quantized for the 8-bit output projection
            out_q = (float(want_float.abs().max()) / (127 if element == torch.int8 else 448), element)
            got_q = qkv_attention(x, w, col, bias, (0, hidden, 2 * hidden), heads, mask, None, torch.float16, out_q)
            want_q = _separate(x, w, col, bias, mask, heads, out_q)
            assert got_q.dtype == element
            differ = (got_q.float() != want_q.float()).float().mean()
            if element == torch.int8:
                assert differ < 1e-2 and (got_q.int() - want_q.int()).abs().max() <= 1
            else:  # a float sum a rounding away from the other lands on the next e4m3 code (1/8 apart),
                # or near zero on a code of the other sign: within one step, or 1% of the range (448)
                a, z = got_q.float(), want_q.float()
                assert differ < 5e-2 and ((a - z).abs() <= torch.clamp(0.125 * torch.maximum(a.abs(), z.abs()), min=4.48)).all()
        # every tile shape the autotuner may pick gives the same values
        for block_k, merge, warps in [(64, False, 4), (32, True, 4), (64, True, 8)]:
            config = {"BLOCK_K": block_k, "MERGE_QK": merge, "num_warps": warps, "num_stages": 2}
            forced = qkv_attention(x, w, col, bias, (0, hidden, 2 * hidden), heads, mask, None, torch.float16,
                                   config=config)
            if element == torch.int8:
                torch.testing.assert_close(forced, got, rtol=1e-3, atol=1e-3)
            else:
                assert _distance(forced, exact) <= allowed
        # the projection's column order may put q, k and v anywhere
        shuffled = torch.cat([w[hidden:2 * hidden], w[2 * hidden:], w[:hidden]])
        shuffled_col = None if col is None else torch.cat([col[hidden:2 * hidden], col[2 * hidden:], col[:hidden]])
        shuffled_bias = torch.cat([bias[hidden:2 * hidden], bias[2 * hidden:], bias[:hidden]])
        again = qkv_attention(x, shuffled, shuffled_col, shuffled_bias, (2 * hidden, 0, hidden), heads, mask, None,
                              torch.float16)
        assert torch.equal(again, got)
    assert not supported(x, w, 5, mask)  # head size not a power of two
    long = torch.zeros(1, 300, w.shape[1], device="cuda", dtype=x.dtype)
    assert not supported(long, w, heads, None)  # scores of 300 keys do not fit one program


def _needs_hopper():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the warp-specialized Gluon kernel is written for Hopper (compute capability 9)")


@needs_cuda
@pytest.mark.parametrize("mask_kind", ["none", "row of keys", "tile"])
def test_the_gluon_kernel_gives_the_triton_kernels_values_with_every_config(mask_kind):
    """The int8 warp-specialized kernel (`qkv_attention_gluon`) against the Triton kernel, each
    tile config launched directly: the same integer sums, so q, k and v agree exactly; the scores
    and softmax may round differently, so outputs agree to fp16 rounding and int8 codes to one step."""
    _needs_hopper()
    from trimtab.backends.gpu import lowbit
    from trimtab.backends.gpu.attention_triton import mask_operand
    from trimtab.backends.gpu.qkv_attention_gluon import fitting_configs, qkv_attention_pingpong, supported
    from trimtab.backends.gpu.qkv_attention_gluon import mask_kind as mask_kind_of
    from trimtab.backends.gpu.qkv_attention_triton import qkv_attention

    torch.manual_seed(1)
    for b, s, k, heads, d in [(5, 128, 768, 12, 64), (3, 64, 256, 4, 32)]:
        hidden = heads * d
        x = lowbit.quantize(torch.randn(b, s, k, device="cuda", dtype=torch.float16), 4 / 127, torch.int8)
        w = torch.randint(-127, 128, (3 * hidden, k), device="cuda", dtype=torch.int8)
        col = (torch.rand(3 * hidden, device="cuda") + 0.5) * 4e-3 / k ** 0.5
        bias = torch.randn(3 * hidden, device="cuda", dtype=torch.float16) * 0.1
        mask = None
        if mask_kind == "row of keys":  # [B, 1, 1, S]: read as one row of keys a sequence
            mask = torch.zeros(b, 1, 1, s, device="cuda", dtype=torch.float16)
            mask[-1, ..., s - 5:] = torch.finfo(torch.float16).min
        if mask_kind == "tile":  # [B, 1, S, S], as BERT's export builds it: [S, S] tiles by TMA
            mask = torch.randn(b, 1, s, s, device="cuda", dtype=torch.float16)
            mask[-1, ..., s - 5:] = torch.finfo(torch.float16).min
        offsets = (hidden, 2 * hidden, 0)  # q, k and v anywhere in the projection's columns
        m, strides = mask_operand(mask, x)
        kind = mask_kind_of(m, x, strides, s)
        assert kind == ["none", "row of keys", "tile"].index(mask_kind)
        assert supported(x, w, heads, m, strides, torch.float16, True)
        # fp16 output tiles beside two [128, 128] mask tiles leave no ring that fits: the Triton kernel runs
        assert supported(x, w, heads, m, strides, torch.float16, False) == (kind != 2 or s < 128)
        want = qkv_attention(x, w, col, bias, offsets, heads, mask, None, torch.float16, async_int8=False)
        want_q_scale = float(want.abs().max()) / 127
        want_q = qkv_attention(x, w, col, bias, offsets, heads, mask, None, torch.float16, (want_q_scale, torch.int8),
                               async_int8=False)
        qk_scale = d ** -0.5 * 1.4426950408889634
        for config in fitting_configs(s, d, k, 2, kind):  # fp16 output
            got = torch.full((b, s, heads, d), float("nan"), device="cuda", dtype=torch.float16)
            qkv_attention_pingpong(x, w, col, bias, offsets, heads, m, strides, qk_scale, got, None, 132, config)
            torch.testing.assert_close(got.permute(0, 2, 1, 3), want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))
        for config in fitting_configs(s, d, k, 1, kind):  # int8 output
            got_q = torch.zeros((b, s, heads, d), device="cuda", dtype=torch.int8)
            qkv_attention_pingpong(x, w, col, bias, offsets, heads, m, strides, qk_scale, got_q,
                                   (want_q_scale, torch.int8), 7, config)  # 7 programs: many items each
            steps = (got_q.permute(0, 2, 1, 3).int() - want_q.int()).abs()
            assert steps.max() <= 1 and (steps > 0).float().mean() < 1e-2, config
