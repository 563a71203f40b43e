"""Skinny GEMM for decode: ``y = x @ W^T`` with few rows (M <= 64), bound by streaming W.

A decode step is a handful of rows against every weight once, so its linears are reads of W
at memory bandwidth with almost no arithmetic. cuBLAS reaches 0.60-0.93 of the copy roofline
at these shapes on an H200 (benchmarks/RESULTS.md; worst at the 8192-wide o_proj); this kernel cuts W into ``BLOCK_N`` output rows x ``K / SPLIT_K`` input
columns per program so that every multiprocessor keeps several tiles of W in flight, and
sums the split-K partials in fp32 in a second tiny kernel. Measured under CUDA graphs (as
decode runs), it reaches 0.83-1.05 of the copy roofline at 2 rows where cuBLAS gets
0.77-0.98.

:func:`skinny_gemm_reference` defines the result (fp32 accumulation, rounded once to the
output dtype) and runs anywhere; :func:`skinny_gemm` is the Triton kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 64
_FITTING_STAGES: dict[tuple, int] = {}  # tile config -> deepest pipeline that compiled


def skinny_gemm_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x: [M, K], w: [N, K] -> [M, N] in x's dtype, accumulated in fp32."""
    return (x.float() @ w.float().t()).to(x.dtype)


@triton.jit(do_not_specialize=["M"])  # the batch changes every step; N and K never do
def _skinny_kernel(x_ptr, w_ptr, out_ptr, part_ptr, M, N, K, k_per_split,
                   s_xm, s_wn, s_om, s_ps, s_pm,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    k_lo = pid_k * k_per_split
    x_rows = x_ptr + offs_m[:, None] * s_xm
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * s_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_lo + k_per_split, BLOCK_K):
        ks = k + offs_k
        if EVEN_K:
            w = tl.load(w_rows + ks[None, :], mask=n_ok[:, None], other=0.0)
            x = tl.load(x_rows + ks[None, :], mask=m_ok[:, None], other=0.0)
        else:
            k_ok = ks < tl.minimum(K, k_lo + k_per_split)
            w = tl.load(w_rows + ks[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_rows + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(x, tl.trans(w))  # [BLOCK_M, BLOCK_N] fp32
    mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptr + offs_m[:, None] * s_om + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + pid_k * s_ps + offs_m[:, None] * s_pm + offs_n[None, :], acc,
                 mask=mask)


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, N, s_ps, s_pm, s_om,
                       SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + s * s_ps + m * s_pm + offs, mask=ok, other=0.0)
    tl.store(out_ptr + m * s_om + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_tiles(m: int, n: int, k: int, sms: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, SPLIT_K, num_stages), from a CUDA-graph sweep on an H200 at the
    34B shapes (benchmarks/bench_skinny_gemm.py, benchmarks/RESULTS.md): wide W (gate_up, the
    head) streams best in 128x256 tiles; deep W (down_proj) needs split-K to fill the
    multiprocessors; the rest in narrow tiles. Split-K only where K divides evenly."""
    if n >= 128 * sms:  # over one 128-row tile per multiprocessor
        return 128, 256, 1, 4
    if k >= 2 * n and k % (4 * 128) == 0 and triton.cdiv(n, 32) < 4 * sms:
        return 32, 128, 4, 3
    if k > n:
        return 64, 256, 1, 4
    return 32, 128, 1, 4


def launch_fitting(kernel, grid, key: tuple, num_stages: int, *args, **kwargs) -> None:
    """Launch ``kernel`` with the deepest pipeline up to ``num_stages`` that fits in shared
    memory (remembered per ``key``). Wide tiles at 64 rows can outgrow it; this happens at the
    first, compiling call, never inside a graph capture."""
    stages = _FITTING_STAGES.get(key, num_stages)
    while True:
        try:
            kernel[grid](*args, num_stages=stages, **kwargs)
            break
        except triton.runtime.errors.OutOfResources:
            if stages == 1:
                raise
            stages -= 1
    _FITTING_STAGES[key] = stages


def skinny_gemm(x: torch.Tensor, w: torch.Tensor, *, block_n: int | None = None,
                block_k: int | None = None, split_k: int | None = None,
                num_warps: int = 4, num_stages: int | None = None,
                defer_split_sum: bool = False) -> torch.Tensor:
    """x: [M, K] (M <= 64), w: [N, K], both row-major in one dtype -> [M, N] in x's dtype.
    With ``defer_split_sum`` a split-K launch returns its fp32 partials [SPLIT_K, M, N]
    instead (no second kernel; :func:`kernels.linear.split_sum_reference` sums them).
    Overrides are for tuning and tests."""
    m, k = x.shape
    n = w.shape[0]
    assert w.shape[1] == k and 0 < m <= MAX_ROWS and x.dtype == w.dtype, (x.shape, w.shape)
    assert x.stride(1) == 1 and w.stride(1) == 1
    bn, bk, split, stages = default_tiles(m, n, k, _sms(x.device))
    block_n, block_k, split_k = block_n or bn, block_k or bk, split_k or split
    num_stages = num_stages or stages
    block_m = max(16, triton.next_power_of_2(m))
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    even_k = k % (split_k * block_k) == 0 and k_per_split * split_k == k
    if split_k > 1:
        part = torch.empty(split_k, m, n, dtype=torch.float32, device=x.device)
        out = part if defer_split_sum else torch.empty(m, n, dtype=x.dtype, device=x.device)
    else:
        out = part = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, block_n), split_k)
    launch_fitting(_skinny_kernel, grid, ("gemm", block_m, block_n, block_k, x.dtype, num_stages),
                   num_stages, x, w, out, part, m, n, k, k_per_split,
                   x.stride(0), w.stride(0), out.stride(0),
                   part.stride(0) if split_k > 1 else 0, part.stride(1) if split_k > 1 else 0,
                   BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k,
                   EVEN_K=even_k, num_warps=num_warps)
    if split_k > 1 and defer_split_sum:
        return part
    if split_k > 1:
        block = 1024
        _sum_splits_kernel[(m, triton.cdiv(n, block))](
            part, out, n, part.stride(0), part.stride(1), out.stride(0),
            SPLIT_K=split_k, BLOCK=block, num_warps=4)
    return out
