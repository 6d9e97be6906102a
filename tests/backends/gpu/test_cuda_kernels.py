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
