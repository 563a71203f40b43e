"""The skinny decode GEMM of a stacked [gate; up] projection with SwiGLU's ``silu(gate) * up``
in its epilogue: one launch instead of :func:`kernels.skinny_gemm.skinny_gemm` followed by
:func:`kernels.triton_norm.silu_mul`, and the [M, 2F] intermediate never goes to memory.

Each program streams the W rows of BLOCK_N / 2 output features, gate and up interleaved
(tile column 2j: gate row f + j, column 2j + 1: up row F + f + j), with the tile sizes the
plain kernel would use for the whole [2F, K] weight, so every output element is accumulated
by the same dot over the same K tiles. The epilogue then does exactly what the two unfused
kernels do to the accumulator: round it to the output dtype as the GEMM's store does, then the
silu_mul kernel's arithmetic (same rounding points, same exp, no FMA contraction).
:func:`kernels.linear.linear_silu_mul_reference` defines the result; the tests check
bit-identity with the unfused kernels (tests/kernels/test_decode_fusion.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .skinny_gemm import MAX_ROWS, _sms, default_tiles, launch_fitting
from .triton_norm import LAUNCH, _round


@triton.jit(do_not_specialize=["M"])
def _skinny_silu_kernel(x_ptr, w_ptr, out_ptr, M, F, K, s_xm, s_wn, s_om,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        EVEN_K: tl.constexpr, CUDA_ROUNDING: tl.constexpr):
    HALF: tl.constexpr = BLOCK_N // 2
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    col = tl.arange(0, BLOCK_N)
    feat = pid * HALF + col // 2  # the output feature of tile column col
    w_row = feat + (col % 2) * F  # even columns: its gate row, odd: its up row
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    f_ok = feat < F
    x_rows = x_ptr + offs_m[:, None] * s_xm
    w_rows = w_ptr + w_row.to(tl.int64)[:, None] * s_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):  # as _skinny_kernel with SPLIT_K = 1
        ks = k + offs_k
        if EVEN_K:
            w = tl.load(w_rows + ks[None, :], mask=f_ok[:, None], other=0.0)
            x = tl.load(x_rows + ks[None, :], mask=m_ok[:, None], other=0.0)
        else:
            k_ok = ks < K
            w = tl.load(w_rows + ks[None, :], mask=f_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_rows + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(x, tl.trans(w))  # [BLOCK_M, BLOCK_N] fp32
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    # The GEMM's store rounds with .to(dtype); the silu_mul kernel reads that back.
    gate, up = tl.split(tl.reshape(acc.to(dtype), (BLOCK_M, HALF, 2)))
    g = gate.to(tl.float32)
    if CUDA_ROUNDING:
        e = libdevice.exp(-g)  # as _silu_mul_kernel: expf, IEEE division
    else:
        e = tl.exp(-g)
    silu = _round(tl.div_rn(g, 1.0 + e), dtype)
    y = _round(silu * up.to(tl.float32), dtype)
    offs_f = pid * HALF + tl.arange(0, HALF)
    tl.store(out_ptr + offs_m[:, None] * s_om + offs_f[None, :], y.to(dtype),
             mask=m_ok[:, None] & (offs_f < F)[None, :])


def skinny_gemm_silu_mul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """x: [M, K] (M <= 64), w: [2F, K] (gate rows, then up rows) -> silu(gate) * up [M, F];
    None where the plain kernel would split K for this weight (its partial sums would need
    another launch anyway), so that the caller runs the unfused pair."""
    m, k = x.shape
    n = w.shape[0]
    assert w.shape[1] == k and n % 2 == 0 and 0 < m <= MAX_ROWS and x.dtype == w.dtype
    assert x.stride(1) == 1 and w.stride(1) == 1
    block_n, block_k, split_k, stages = default_tiles(m, n, k, _sms(x.device))
    if split_k != 1:
        return None
    f = n // 2
    block_m = max(16, triton.next_power_of_2(m))
    out = torch.empty(m, f, dtype=x.dtype, device=x.device)
    launch_fitting(_skinny_silu_kernel, (triton.cdiv(f, block_n // 2),),
                   ("silu", block_m, block_n, block_k, x.dtype, stages), stages,
                   x, w, out, m, f, k, x.stride(0), w.stride(0), out.stride(0),
                   BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                   EVEN_K=k % block_k == 0, CUDA_ROUNDING=x.is_cuda, num_warps=4, **LAUNCH)
    return out
