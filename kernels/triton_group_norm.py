"""Triton kernels for :mod:`kernels.group_norm` on channels_last (NHWC) activations.

Statistics: each program walks a run of positions of one image in tiles [P, G, C/G] and keeps a
running (count, mean, M2) per group, merging tiles with Chan's parallel formula (no
E[x^2] - E[x]^2 cancellation); the few per-program partials are merged the same way in torch.
Normalise: each program reads a tile [P, C] of one image's rows, applies the per-channel
affine of its group's statistics and the optional swish in fp32, and stores once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_STATS_TILE = 4096  # elements per stats tile (P positions x C channels)
_STATS_PROGRAMS = 1024  # per image: enough to fill an H200 several times over
_NORM_TILE = 8192  # elements per normalise tile


@triton.jit
def _merge_block(n_a, mean_a, m2_a, x, ok, n_b):
    """Chan's merge of a block x [P, G, CPG] (``ok`` masks its positions, n_b values per
    group) into the running per-group (count, mean, M2)."""
    mean_b = tl.sum(tl.sum(tl.where(ok, x, 0.0), 2), 0) / n_b
    d = tl.where(ok, x - mean_b[None, :, None], 0.0)
    m2_b = tl.sum(tl.sum(d * d, 2), 0)
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * n_b / n)


@triton.jit
def _group_stats_kernel(x_ptr, mean_ptr, m2_ptr, cnt_ptr, s_xb, n_pos, pos_per_prog,
                        G: tl.constexpr, CPG: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program (chunk, image): partial (mean, M2) per group over positions of its chunk."""
    chunk = tl.program_id(0)
    img = tl.program_id(1).to(tl.int64)
    C: tl.constexpr = G * CPG
    g = tl.arange(0, G)
    k = tl.arange(0, CPG)
    chan = (g[:, None] * CPG + k[None, :])[None, :, :]  # [1, G, CPG]
    start = chunk * pos_per_prog
    stop = tl.minimum(start + pos_per_prog, n_pos)
    n_a = tl.sum(tl.zeros((G,), dtype=tl.float32), 0)  # fp32 scalar, loop-carried
    mean_a = tl.zeros((G,), dtype=tl.float32)
    m2_a = tl.zeros((G,), dtype=tl.float32)
    for p0 in range(start, stop, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = (p < stop)[:, None, None]
        ptrs = x_ptr + img * s_xb + p.to(tl.int64)[:, None, None] * C + chan
        x = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)  # [P, G, CPG]
        n_b = (tl.minimum(stop - p0, BLOCK_P) * CPG).to(tl.float32)
        n_a, mean_a, m2_a = _merge_block(n_a, mean_a, m2_a, x, ok, n_b)
    out = (img * tl.num_programs(0) + chunk) * G + g
    tl.store(mean_ptr + out, mean_a)
    tl.store(m2_ptr + out, m2_a)
    tl.store(cnt_ptr + out, tl.zeros((G,), dtype=tl.float32) + n_a)


def group_moments_triton(x: torch.Tensor,
                         groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partial (count, mean, M2), each fp32 [B, chunks, groups], of channels_last x [B, C, h, W]
    (C/groups a power of 2); merged by :func:`kernels.group_norm.stats_from_moments`."""
    b, c, h, w = x.shape
    n_pos = h * w
    block_p = max(1, triton.next_power_of_2(max(1, _STATS_TILE // c)))
    per_prog = max(block_p, triton.cdiv(triton.cdiv(n_pos, _STATS_PROGRAMS), block_p) * block_p)
    chunks = triton.cdiv(n_pos, per_prog)
    mean, m2, cnt = (torch.empty(b, chunks, groups, device=x.device, dtype=torch.float32)
                     for _ in range(3))
    _group_stats_kernel[(chunks, b)](x, mean, m2, cnt, x.stride(0), n_pos, per_prog,
                                     G=groups, CPG=c // groups, BLOCK_P=block_p)
    return cnt, mean, m2


@triton.jit
def _norm_swish_kernel(src_ptr, dst_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_src, s_dst, n_pos,
                       C: tl.constexpr, CPG: tl.constexpr, G: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, SWISH: tl.constexpr):
    """Program (tile, image): dst = [swish]((src - mean) * rstd * w + b) on [P, C] positions."""
    img = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    grp = img * G + c // CPG
    mu = tl.load(mean_ptr + grp, mask=c_ok, other=0.0)
    scale = tl.load(rstd_ptr + grp, mask=c_ok, other=0.0) * \
        tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    shift = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    ok = (p < n_pos)[:, None] & c_ok[None, :]
    offs = p[:, None] * C + c[None, :]
    x = tl.load(src_ptr + img * s_src + offs, mask=ok, other=0.0).to(tl.float32)
    y = (x - mu[None, :]) * scale[None, :] + shift[None, :]
    if SWISH:
        y = y * tl.sigmoid(y)
    tl.store(dst_ptr + img * s_dst + offs, y.to(dst_ptr.dtype.element_ty), mask=ok)


def norm_swish_triton(src: torch.Tensor, dst: torch.Tensor, mean: torch.Tensor,
                      rstd: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      swish: bool) -> None:
    """dst = [swish](group-normalised src); both [B, C, h, W] with dense NHWC rows per image."""
    b, c, h, w = src.shape
    n_pos = h * w
    block_c = triton.next_power_of_2(c)
    block_p = max(1, _NORM_TILE // block_c)
    grid = (triton.cdiv(n_pos, block_p), b)
    _norm_swish_kernel[grid](src, dst, mean.contiguous(), rstd.contiguous(), weight, bias,
                             src.stride(0), dst.stride(0), n_pos, C=c, CPG=c // mean.shape[1],
                             G=mean.shape[1], BLOCK_C=block_c, BLOCK_P=block_p, SWISH=swish)


@triton.jit
def _epilogue_kernel(y_ptr, bias_ptr, dst_ptr, mean_ptr, m2_ptr, cnt_ptr,
                     s_yb, s_yr, s_yw, s_db, s_dr, s_dw, width, n_pos, pos_per_prog,
                     G: tl.constexpr, CPG: tl.constexpr, BLOCK_P: tl.constexpr,
                     STORE: tl.constexpr, ADD: tl.constexpr, STATS: tl.constexpr):
    """Program (chunk, image): v = round(y + bias) [; v = round(dst + v)] [; dst = v] on the
    [rows, W] positions of its chunk, and the partial (mean, M2) per group of the stored v."""
    chunk = tl.program_id(0)
    img = tl.program_id(1).to(tl.int64)
    g = tl.arange(0, G)
    k = tl.arange(0, CPG)
    chan = (g[:, None] * CPG + k[None, :])[None, :, :]  # [1, G, CPG]
    bias = tl.load(bias_ptr + chan).to(tl.float32)
    start = chunk * pos_per_prog
    stop = tl.minimum(start + pos_per_prog, n_pos)
    n_a = tl.sum(tl.zeros((G,), dtype=tl.float32), 0)
    mean_a = tl.zeros((G,), dtype=tl.float32)
    m2_a = tl.zeros((G,), dtype=tl.float32)
    for p0 in range(start, stop, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = (p < stop)[:, None, None]
        r = (p // width).to(tl.int64)[:, None, None]
        w = (p % width).to(tl.int64)[:, None, None]
        y = tl.load(y_ptr + img * s_yb + r * s_yr + w * s_yw + chan, mask=ok, other=0.0)
        v = (y.to(tl.float32) + bias).to(y_ptr.dtype.element_ty)  # as conv's own bias add
        d_ptrs = dst_ptr + img * s_db + r * s_dr + w * s_dw + chan
        if ADD:
            v = (tl.load(d_ptrs, mask=ok, other=0.0).to(tl.float32) + v.to(tl.float32))
            v = v.to(dst_ptr.dtype.element_ty)
        if STORE:
            tl.store(d_ptrs, v.to(dst_ptr.dtype.element_ty), mask=ok)
        if STATS:
            n_b = (tl.minimum(stop - p0, BLOCK_P) * CPG).to(tl.float32)
            n_a, mean_a, m2_a = _merge_block(n_a, mean_a, m2_a, v.to(tl.float32), ok, n_b)
    if STATS:
        out = (img * tl.num_programs(0) + chunk) * G + g
        tl.store(mean_ptr + out, mean_a)
        tl.store(m2_ptr + out, m2_a)
        tl.store(cnt_ptr + out, tl.zeros((G,), dtype=tl.float32) + n_a)


def conv_epilogue_triton(y: torch.Tensor, bias: torch.Tensor, dst: torch.Tensor | None,
                         add: bool, groups: int | None):
    """One pass over a conv output strip y [B, C, h, W] (channel stride 1, any row/column
    strides): add the conv bias, then copy into or add into dst (same shape, channel stride 1),
    and take the group moments of the result. Returns (count, mean, M2) or None."""
    b, c, h, w = y.shape
    groups_k = groups or 1
    n_pos = h * w
    block_p = max(1, triton.next_power_of_2(max(1, _STATS_TILE // c)))
    per_prog = max(block_p, triton.cdiv(triton.cdiv(n_pos, _STATS_PROGRAMS), block_p) * block_p)
    chunks = triton.cdiv(n_pos, per_prog)
    shape = (b, chunks, groups_k) if groups else (1,)
    mean, m2, cnt = (torch.empty(shape, device=y.device, dtype=torch.float32) for _ in range(3))
    out = dst if dst is not None else y
    _epilogue_kernel[(chunks, b)](y, bias, out, mean, m2, cnt,
                                  y.stride(0), y.stride(2), y.stride(3),
                                  out.stride(0), out.stride(2), out.stride(3), w, n_pos, per_prog,
                                  G=groups_k, CPG=c // groups_k, BLOCK_P=block_p,
                                  STORE=dst is not None, ADD=add, STATS=groups is not None)
    return (cnt, mean, m2) if groups else None
