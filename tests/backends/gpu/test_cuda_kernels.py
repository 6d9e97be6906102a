"""trimtab's own CUDA kernels outside the int8 GEMM (skipped without a GPU)."""

from __future__ import annotations

import pytest

from tests.backends.gpu._support import needs_cuda

torch = pytest.importorskip("torch")


@needs_cuda
def test_nhwc_max_pool_matches_pytorch():
    from trimtab.backends.gpu.pool_triton import max_pool2d_nhwc

    for shape, k, s, p in [((4, 64, 112, 112), 3, 2, 1), ((2, 3, 9, 7), 2, 2, 0), ((1, 200, 15, 15), 3, 1, 1)]:
        x = torch.randn(shape, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        want = torch.nn.functional.max_pool2d(x, k, s, p)
        assert torch.equal(max_pool2d_nhwc(x, [k, k], [s, s], [p, p]), want)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_layer_norm_with_residual_and_8bit_copy_matches_pytorch(dtype):
    from trimtab.backends.gpu.lowbit import quantize_reference
    from trimtab.backends.gpu.norm_triton import layer_norm

    torch.manual_seed(0)
    for rows, n in [(4096, 768), (33, 100), (5, 1024)]:
        x, z = (torch.randn(rows, n, device="cuda", dtype=dtype) for _ in range(2))
        w, b = torch.randn(n, device="cuda", dtype=dtype), torch.randn(n, device="cuda", dtype=dtype)
        want32 = torch.nn.functional.layer_norm((x + z).float(), (n,), w.float(), b.float(), 1e-12)
        torch.testing.assert_close(layer_norm(x, w, b, 1e-12, residual=z), want32.to(dtype), rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(layer_norm(x, w, None, 1e-5).float(),
                                   torch.nn.functional.layer_norm(x.float(), (n,), w.float(), None, 1e-5),
                                   rtol=2e-3, atol=2e-3)
        for element in (torch.int8, torch.float8_e4m3fn):
            y, q = layer_norm(x, w, b, 1e-12, residual=z, quant=(0.03, element))
            want = quantize_reference(want32, 0.03, element).float()
            assert q.dtype == element and (q.float() - want).abs().max() <= (1 if element == torch.int8 else 32)
            assert (q.float() != want).float().mean() < 0.01


@needs_cuda
def test_triton_attention_matches_sdpa_on_strided_qkv_with_a_padding_mask():
    from trimtab.backends.gpu.attention_triton import attention, supported
    from trimtab.backends.gpu.lowbit import quantize_reference

    torch.manual_seed(0)
    for b, h, s, d in [(3, 4, 128, 64), (2, 2, 77, 32), (1, 3, 300, 128)]:
        fused = torch.randn(b, s, 3 * h * d, device="cuda", dtype=torch.float16)  # a fused Q/K/V output
        q, k, v = (t.reshape(b, s, h, d).transpose(1, 2) for t in fused.split(h * d, dim=-1))
        mask = torch.zeros(b, 1, 1, s, device="cuda", dtype=torch.float16)
        mask[-1, ..., s - 9:] = torch.finfo(torch.float16).min  # padded keys of the last sequence
        assert supported(q, k, v, mask)
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        got = attention(q, k, v, mask, 0.3)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(attention(q, k, v, None, None),
                                   torch.nn.functional.scaled_dot_product_attention(q, k, v), rtol=2e-3, atol=2e-3)
        per_query = torch.randn(b, h, s, s, device="cuda", dtype=torch.float16)  # a bias for every (query, key)
        torch.testing.assert_close(attention(q, k, v, per_query, 0.3),
                                   torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=per_query,
                                                                                    scale=0.3), rtol=2e-3, atol=2e-3)
        q8 = attention(q, k, v, mask, 0.3, out_q=(0.01, torch.int8))
        want8 = quantize_reference(want.float(), 0.01, torch.int8)
        assert q8.dtype == torch.int8 and (q8.int() - want8.int()).abs().max() <= 1
    assert not supported(q.float(), k.float(), v.float(), None)  # fp32 stays on SDPA (no TF32)


@needs_cuda
def test_the_half_precision_gemm_with_gelu_matches_cublas_then_gelu():
    from trimtab.backends.gpu import lowbit

    torch.manual_seed(0)
    for m, n, k in [(4096, 3072, 768), (77, 200, 96)]:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        w = torch.randn(n, k, device="cuda", dtype=torch.float16) / k ** 0.5
        b = torch.randn(n, device="cuda", dtype=torch.float16)
        want = torch.nn.functional.gelu(torch.nn.functional.linear(x.float(), w.float(), b.float()))
        got = lowbit.qgemm(x, w, torch.ones(n, device="cuda"), b, "gelu", torch.float16)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=3e-3)


@needs_cuda
def test_kernel_choices_are_timed_from_cuda_graphs():
    from trimtab.backends.gpu.fused import _fastest

    x = torch.randn(2048, 2048, device="cuda")
    timings: dict = {}
    chosen = _fastest({"one": lambda a: a @ a, "three": lambda a: a @ a @ a @ a}, (x,), timings)
    # (no speed assertion: the choice must be the faster of the times it recorded, whatever they are)
    assert set(timings) == {"one", "three"} and all(ms > 0 for ms in timings.values())
    assert chosen == min(timings, key=timings.get)


@needs_cuda
def test_fake_quantize_keeps_a_channels_last_tensor_channels_last():
    from trimtab.backends.gpu import lowbit

    x = torch.randn(2, 16, 5, 7, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    got = lowbit.fake_quantize(x, 0.02, torch.int8, fast=False)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == x.dtype
    want = (lowbit.quantize_reference(x, 0.02, torch.int8).float() * 0.02).half()
    assert torch.equal(got, want)
    q = lowbit.quantize(x, 0.02, torch.int8, fast=False)
    assert torch.equal(q, lowbit.quantize_reference(x, 0.02, torch.int8))
