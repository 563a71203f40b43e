"""The linear layers' GEMM: ``F.linear``, or the skinny Triton kernel for decode-sized
batches on CUDA (:mod:`kernels.skinny_gemm`), where cuBLAS leaves bandwidth unused.

Two decode fusions ride on the skinny kernel (each removes a launch per layer; results stay
bit-identical to the unfused kernels, see tests/kernels/test_decode_fusion.py):

- ``linear(..., defer_split_sum=True)`` may return :class:`SplitKPartials` instead of the
  summed output: the consumer (the next add + RMSNorm) adds the fp32 partials up itself.
- :func:`linear_silu_mul` runs a stacked [gate; up] projection with SiLU * mul in the GEMM's
  epilogue (:mod:`kernels.skinny_swiglu`).

``skinny=False`` (``KernelChoice.skinny_gemm``, ``EMU35_SKINNY_GEMM=0``) turns the kernel (and
both fusions) off. Triton is imported only on first CUDA use, so CPU-only use never imports it.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

MAX_ROWS = 16  # H200 sweep: at 64 rows cuBLAS is as fast (benchmarks/RESULTS.md)


@dataclass(frozen=True)
class SplitKPartials:
    """A split-K GEMM's output before its partial sums are added: ``parts`` [S, M, N] fp32,
    the result the sum over S in split order, rounded once to ``dtype``."""

    parts: torch.Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.parts.shape[1:]

    def summed(self) -> torch.Tensor:
        return split_sum_reference(self.parts, self.dtype)


def split_sum_reference(parts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What the skinny kernel's ``_sum_splits_kernel`` computes: fp32 0 + part 0 + part 1 + ...
    (in that order), rounded once to dtype. parts: [S, M, N] fp32 -> [M, N]."""
    acc = torch.zeros(parts.shape[1:], dtype=torch.float32, device=parts.device)
    for s in range(parts.shape[0]):
        acc = acc + parts[s]
    return acc.to(dtype)


def linear_silu_mul_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of ``x @ w^T`` for w = [gate; up] ([2F, K]): the GEMM accumulated in
    fp32 and rounded to x's dtype, then :func:`kernels.fused_norm.silu_mul_reference`."""
    from .fused_norm import silu_mul_reference

    return silu_mul_reference((x.float() @ w.float().t()).to(x.dtype))


@functools.cache
def _skinny_kernels():
    if importlib.util.find_spec("triton") is None:
        return None
    from . import skinny_gemm, skinny_swiglu

    return skinny_gemm.skinny_gemm, skinny_swiglu.skinny_gemm_silu_mul


def _skinny(x: torch.Tensor, w: torch.Tensor):
    """The skinny kernels when they apply to (x, w), else None."""
    if x.is_cuda and x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and x.stride(1) == 1 \
            and w.stride(1) == 1 and x.dtype == w.dtype:
        return _skinny_kernels()
    return None


def linear(x: torch.Tensor, w: torch.Tensor, defer_split_sum: bool = False,
           skinny: bool = True) -> torch.Tensor | SplitKPartials:
    """x: [..., K], w: [N, K] -> [..., N] (no bias). With ``defer_split_sum`` a split-K skinny
    GEMM returns its unsummed :class:`SplitKPartials` (one launch fewer); ``skinny=False``
    never takes the skinny kernel."""
    kernels = _skinny(x, w) if skinny else None
    if kernels is not None:
        out = kernels[0](x, w, defer_split_sum=defer_split_sum)
        return SplitKPartials(out, x.dtype) if out.dim() == 3 else out
    return F.linear(x, w)


def linear_silu_mul(x: torch.Tensor, w: torch.Tensor, silu_mul: Callable, fuse: bool = True,
                    skinny: bool = True) -> torch.Tensor:
    """``silu_mul(linear(x, w))`` for a stacked [gate; up] weight w [2F, K] -> [..., F]; with
    ``fuse``, one launch where the skinny kernel applies (it must be the Triton silu_mul
    that ``silu_mul`` stands for: the epilogue reproduces that kernel's rounding);
    ``skinny=False`` never takes the skinny kernel."""
    kernels = _skinny(x, w) if fuse and skinny else None
    if kernels is not None:
        out = kernels[1](x, w)
        if out is not None:
            return out
    return silu_mul(linear(x, w, skinny=skinny))
