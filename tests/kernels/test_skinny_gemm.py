"""The skinny decode GEMM against its reference (fp32 accumulation, one rounding), and the
linear dispatch. CPU: Triton's interpreter at small shapes; ``-m gpu``: real 34B shapes."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # must be set before triton.jit decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.linear import linear  # noqa: E402

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _pair(m, n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(DEV, dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(DEV, dtype)
    return x, w


@needs_triton
@pytest.mark.parametrize("m", [1, 2, 5, 16, 33])
@pytest.mark.parametrize("n,k,split", [(96, 256, 1), (70, 512, 2), (130, 384, 2), (64, 1024, 4)])
def test_kernel_matches_reference(m, n, k, split):
    from kernels.skinny_gemm import skinny_gemm, skinny_gemm_reference

    x, w = _pair(m, n, k, torch.float32, seed=m * 1000 + n)
    out = skinny_gemm(x, w, block_n=32, block_k=64, split_k=split, num_stages=1)
    ref = skinny_gemm_reference(x, w)
    assert out.shape == (m, n) and out.dtype == x.dtype
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu  # Triton's interpreter has no bf16 dot (numpy has no bf16)
def test_bf16_rounds_once_like_the_reference():
    from kernels.skinny_gemm import skinny_gemm, skinny_gemm_reference

    x, w = _pair(3, 64, 512, torch.bfloat16, seed=7)
    out = skinny_gemm(x, w, block_n=32, block_k=64, split_k=2, num_stages=1)
    ref = skinny_gemm_reference(x, w)
    # Same fp32 sums in another order: at most one bf16 ulp apart.
    assert ((out.float() - ref.float()).abs() <= ref.float().abs() * 2 ** -7 + 1e-6).all()


def test_default_tiles_follow_the_sweep():
    from kernels.skinny_gemm import default_tiles

    # The H200 sweep's winners at 2 rows (benchmarks/RESULTS.md), by shape.
    assert default_tiles(2, 10240, 5120, 132)[:3] == (32, 128, 1)     # qkv
    assert default_tiles(2, 5120, 8192, 132)[:3] == (64, 256, 1)      # o_proj
    assert default_tiles(2, 51200, 5120, 132)[:3] == (128, 256, 1)    # gate_up
    assert default_tiles(2, 5120, 25600, 132)[:3] == (32, 128, 4)     # down_proj
    assert default_tiles(2, 282944, 5120, 132)[:3] == (128, 256, 1)   # lm_head
    for n, k in [(5120, 25600 + 128), (640, 3000), (77, 130)]:  # split only where K divides
        bn, bk, split, _ = default_tiles(2, n, k, 132)
        assert split == 1 or k % (split * bk) == 0


def test_linear_falls_back_off_cuda():
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    torch.testing.assert_close(linear(x, w), F.linear(x, w))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 16, 64])
@pytest.mark.parametrize("n,k", [(10240, 5120), (5120, 8192), (51200, 5120), (5120, 25600),
                                 (282944, 5120)])
def test_real_shapes_on_gpu(m, n, k):
    from kernels.skinny_gemm import skinny_gemm, skinny_gemm_reference

    x, w = _pair(m, n, k, torch.bfloat16)
    out = skinny_gemm(x, w)
    ref = skinny_gemm_reference(x, w)
    assert ((out.float() - ref.float()).abs() <= ref.float().abs() * 2 ** -7 + 1e-3).all()
