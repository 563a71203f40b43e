"""Split GroupNorm: the reference against F.group_norm, Triton against the reference.

On a CPU-only machine the Triton kernels run under TRITON_INTERPRET=1 (skipped when Triton is
not installed); ``-m gpu`` runs them compiled on CUDA at the released tokenizer's widths.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # must be set before triton.jit decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.group_norm import (conv_epilogue, group_moments, group_stats,  # noqa: E402
                                group_stats_reference, norm_swish_into, norm_swish_reference,
                                stats_from_moments)

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _activation(shape, offset=0.0, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 2.0 + offset
    return x.to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)


def _affine(c, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (1 + 0.3 * torch.randn(c, generator=gen)).to(DEVICE), \
        (0.2 * torch.randn(c, generator=gen)).to(DEVICE)


@pytest.mark.parametrize("swish", [True, False])
def test_reference_equals_group_norm_then_swish(swish):
    x = _activation((2, 64, 5, 7), offset=3.0)
    w, b = _affine(64)
    mean, rstd = group_stats_reference(x, 32, 1e-6)
    expected = F.group_norm(x, 32, w, b, eps=1e-6)
    if swish:
        expected = expected * torch.sigmoid(expected)
    got = norm_swish_reference(x, mean, rstd, w, b, swish)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("shape", [(1, 32, 3, 5), (2, 64, 9, 11), (1, 256, 16, 17)])
def test_triton_stats_match_reference(shape):
    # A large offset makes E[x^2] - E[x]^2 useless; the merged Welford partials must not care.
    x = _activation(shape, offset=100.0)
    mean, rstd = group_stats(x, 32, 1e-6, impl="triton")
    ref_mean, ref_rstd = group_stats_reference(x, 32, 1e-6)
    torch.testing.assert_close(mean, ref_mean, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rstd, ref_rstd, rtol=1e-4, atol=0)


@pytest.mark.parametrize("impl", ["reference", pytest.param("triton", marks=needs_triton)])
def test_moments_of_row_pieces_merge_to_the_whole(impl):
    # Uneven row pieces (as conv output strips arrive) merged by Chan's formula.
    x = _activation((2, 64, 11, 6), offset=50.0)
    parts = [group_moments(x[:, :, a:b], 32, impl) for a, b in ((0, 1), (1, 5), (5, 11))]
    mean, rstd = stats_from_moments(parts, 1e-6)
    ref_mean, ref_rstd = group_stats_reference(x, 32, 1e-6)
    torch.testing.assert_close(mean, ref_mean, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rstd, ref_rstd, rtol=1e-4, atol=0)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("swish", [True, False])
def test_triton_norm_rows_match_reference(dtype, swish):
    x = _activation((2, 96, 8, 6), dtype=dtype)  # 96 channels: a masked channel tile
    w, b = _affine(96)
    mean, rstd = group_stats_reference(x, 32, 1e-6)
    # Rows 2..6 of x into rows 1..5 of a taller buffer, as a strip with a halo is filled.
    dst = torch.empty(2, 96, 7, 6, device=DEVICE, dtype=dtype,
                      memory_format=torch.channels_last).zero_()
    norm_swish_into(x[:, :, 2:7], dst[:, :, 1:6], mean, rstd, w, b, swish, impl="triton")
    expected = norm_swish_reference(x[:, :, 2:7], mean, rstd, w, b, swish)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(dst[:, :, 1:6], expected, **tol)
    assert not dst[:, :, 0].any() and not dst[:, :, 6].any()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["copy", "add", "stats-only", "interleaved"])
def test_triton_conv_epilogue_matches_reference(dtype, mode):
    # y: a bias-free conv output strip; dst: rows of a taller tensor, or (interleaved) every
    # other row and column of it, as the sub-pixel upsample writes its four phases.
    y = _activation((2, 64, 3, 5), offset=4.0, dtype=dtype, seed=3)
    bias = _affine(64, seed=4)[1].to(dtype)
    big = _activation((2, 64, 8, 10), dtype=dtype, seed=5)
    view = {"copy": lambda t: t[:, :, 2:5, :5], "add": lambda t: t[:, :, 4:7, 3:8],
            "stats-only": None, "interleaved": lambda t: t[:, :, 1:7:2, 1::2]}[mode]
    got_big, ref_big = big.clone(), big.clone()
    got_dst = view(got_big) if view else None
    ref_dst = view(ref_big) if view else None
    got = conv_epilogue(y, bias, got_dst, mode == "add", 32, impl="triton")
    ref = conv_epilogue(y, bias, ref_dst, mode == "add", 32, impl="reference")
    # bf16: one ulp at |v| ~ 16 (interpreter rounding, a cancelling residual add)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.13, rtol=1e-2)
    torch.testing.assert_close(got_big, ref_big, **tol)  # also: nothing outside dst written
    mean, rstd = stats_from_moments([got], 1e-6)
    # the moments of what was stored (TRITON_INTERPRET rounds bf16 differently from torch)
    ref_mean, ref_rstd = stats_from_moments([group_moments(got_dst, 32)] if view else [ref], 1e-6)
    loose = dtype == torch.bfloat16 and not view
    torch.testing.assert_close(mean, ref_mean, atol=1e-4, rtol=1e-2 if loose else 1e-4)
    torch.testing.assert_close(rstd, ref_rstd, atol=0, rtol=1e-2 if loose else 1e-3)
    assert conv_epilogue(y, bias, None, False, None, impl="triton") is None


@pytest.mark.gpu
@pytest.mark.parametrize("channels, side", [(256, 1024), (512, 256), (1024, 64)])
def test_triton_matches_reference_at_released_widths(channels, side):
    x = _activation((1, channels, side, side), dtype=torch.bfloat16)
    w, b = _affine(channels)
    mean, rstd = group_stats(x, 32, 1e-6, impl="triton")
    ref_mean, ref_rstd = group_stats_reference(x, 32, 1e-6)
    torch.testing.assert_close(mean, ref_mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rstd, ref_rstd, atol=0, rtol=1e-4)
    dst = torch.empty_like(x)
    norm_swish_into(x, dst, mean, rstd, w, b, True, impl="triton")
    torch.testing.assert_close(dst, norm_swish_reference(x, mean, rstd, w, b, True),
                               atol=2e-2, rtol=2e-2)
