"""The linear layers' GEMM: ``F.linear``, or the skinny Triton kernel for decode-sized
batches on CUDA (:mod:`kernels.skinny_gemm`), where cuBLAS leaves bandwidth unused.

``EMU35_SKINNY_GEMM=0`` turns the kernel off. Triton is imported only on first CUDA use, so
CPU-only use never imports it.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch
import torch.nn.functional as F

ENV_VAR = "EMU35_SKINNY_GEMM"
MAX_ROWS = 16  # H200 sweep: at 64 rows cuBLAS is as fast (benchmarks/RESULTS.md)


@functools.cache
def _skinny_kernel():
    if importlib.util.find_spec("triton") is None:
        return None
    from .skinny_gemm import skinny_gemm

    return skinny_gemm


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x: [..., K], w: [N, K] -> [..., N] (no bias)."""
    if x.is_cuda and x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and x.stride(1) == 1 \
            and w.stride(1) == 1 and x.dtype == w.dtype and os.environ.get(ENV_VAR) != "0":
        kernel = _skinny_kernel()
        if kernel is not None:
            return kernel(x, w)
    return F.linear(x, w)
