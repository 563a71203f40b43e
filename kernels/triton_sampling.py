"""Triton guided scores (definition: :func:`kernels.sampling.guided_scores_reference`).

The grid is (row, vocabulary chunk) for both launches, so a batch of two rows still spreads
over every SM:

1. ``_chunk_stats_kernel``: for each guided row, the running max and sum of exp of every
   stream it reads (cond, uncond, and full_uncond on three-way rows) over one chunk, in one
   online pass. Unguided rows return at once.
2. ``_write_scores_kernel``: merges the row's chunk statistics (a few hundred floats) into
   log-sum-exps, then streams the chunk once more: the grammar mask (one uint8 table row per
   mask kind) first, so masked-out ids are not read, then log-softmax, CFG combine and the
   temperature; writes fp32 scores.

Guided rows read their streams once in full and once where allowed (the second pass partly
from L2 at small R) and write once; unguided rows read cond where allowed and write once. One launch cannot do both passes: every chunk's
write needs the whole row's log-sum-exp, and a grid-wide wait is not safe to launch.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _chunk_max_sum(row_ptr, lo, hi, BLOCK: tl.constexpr):
    """Online max and sum of exp(x - max) over row[lo:hi]."""
    m = tl.full([], NEG_INF, tl.float32)
    total = tl.full([], 0.0, tl.float32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < hi, other=NEG_INF)
        m_new = tl.maximum(m, tl.max(x, 0))
        shift = tl.where(m_new == NEG_INF, 0.0, m_new)  # an all -inf tile adds nothing
        total = total * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), 0)
        m = m_new
    return m, total


@triton.jit
def _chunk_stats_kernel(cond_ptr, uncond_ptr, full_ptr, guide_ptr, max_ptr, sum_ptr,
                        V, chunk, n_chunks, s_cond, s_uncond, s_full,
                        BLOCK: tl.constexpr, HAS_FULL: tl.constexpr):
    row = tl.program_id(0)
    j = tl.program_id(1)
    guide = tl.load(guide_ptr + row)
    if guide == 0:
        return
    lo = j * chunk
    hi = tl.minimum(lo + chunk, V)
    slot = row * 3 * n_chunks + j  # stats: [R, 3 streams, n_chunks]
    row64 = row.to(tl.int64)
    m, total = _chunk_max_sum(cond_ptr + row64 * s_cond, lo, hi, BLOCK)
    tl.store(max_ptr + slot, m)
    tl.store(sum_ptr + slot, total)
    m, total = _chunk_max_sum(uncond_ptr + row64 * s_uncond, lo, hi, BLOCK)
    tl.store(max_ptr + slot + n_chunks, m)
    tl.store(sum_ptr + slot + n_chunks, total)
    if HAS_FULL:
        if guide == 2:
            m, total = _chunk_max_sum(full_ptr + row64 * s_full, lo, hi, BLOCK)
            tl.store(max_ptr + slot + 2 * n_chunks, m)
            tl.store(sum_ptr + slot + 2 * n_chunks, total)


@triton.jit
def _row_lse(max_ptr, sum_ptr, base, n_chunks, CHUNKS: tl.constexpr):
    """log-sum-exp of a row's stream from its per-chunk (max, sum)."""
    offs = tl.arange(0, CHUNKS)
    ok = offs < n_chunks
    m = tl.load(max_ptr + base + offs, mask=ok, other=NEG_INF)
    total = tl.load(sum_ptr + base + offs, mask=ok, other=0.0)
    top = tl.max(m, 0)
    shift = tl.where(top == NEG_INF, 0.0, top)
    return shift + tl.log(tl.sum(total * tl.exp(m - shift), 0))


@triton.jit
def _write_scores_kernel(cond_ptr, uncond_ptr, full_ptr, out_ptr, guide_ptr, scale_ptr,
                         image_scale_ptr, temp_ptr, mask_row_ptr, allowed_ptr, max_ptr, sum_ptr,
                         V, chunk, n_chunks, s_cond, s_uncond, s_full, s_out, s_allowed,
                         BLOCK: tl.constexpr, CHUNKS: tl.constexpr,
                         HAS_UNCOND: tl.constexpr, HAS_FULL: tl.constexpr):
    row = tl.program_id(0)
    j = tl.program_id(1)
    row64 = row.to(tl.int64)
    guide = tl.load(guide_ptr + row)
    temp = tl.load(temp_ptr + row)
    allowed_row = allowed_ptr + tl.load(mask_row_ptr + row).to(tl.int64) * s_allowed
    cond_row = cond_ptr + row64 * s_cond
    out_row = out_ptr + row64 * s_out
    lo = j * chunk
    hi = tl.minimum(lo + chunk, V)
    guided = guide != 0
    three = guide == 2
    hi_guided = tl.where(guided, hi, lo)  # unguided rows load no uncond, two-way rows no full
    hi_three = tl.where(three, hi, lo)
    lse_c = tl.full([], 0.0, tl.float32)
    lse_u = tl.full([], 0.0, tl.float32)
    lse_a = tl.full([], 0.0, tl.float32)
    base = row * 3 * n_chunks
    if HAS_UNCOND:
        if guided:  # unguided rows have no statistics
            lse_c = _row_lse(max_ptr, sum_ptr, base, n_chunks, CHUNKS)
            lse_u = _row_lse(max_ptr, sum_ptr, base + n_chunks, n_chunks, CHUNKS)
    if HAS_FULL:
        if three:
            lse_a = _row_lse(max_ptr, sum_ptr, base + 2 * n_chunks, n_chunks, CHUNKS)
    scale = tl.load(scale_ptr + row)
    image_scale = tl.load(image_scale_ptr + row)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < hi
        keep = tl.load(allowed_row + offs, mask=ok, other=0) != 0
        x = tl.load(cond_row + offs, mask=keep, other=0.0)  # masked-out ids are never read
        if HAS_UNCOND:
            lc = x - lse_c
            lu = tl.load(uncond_ptr + row64 * s_uncond + offs, mask=keep & (offs < hi_guided),
                         other=0.0) - lse_u
            mixed = scale * (lc - lu) + lu
            if HAS_FULL:
                la = tl.load(full_ptr + row64 * s_full + offs, mask=keep & (offs < hi_three),
                             other=0.0) - lse_a
                mixed = tl.where(three, la + image_scale * (lu - la) + scale * (lc - lu), mixed)
            x = tl.where(guided, mixed, x)
        x = tl.where(keep, x, NEG_INF)
        x = tl.where(temp != 1.0, tl.math.fdiv(x, temp, ieee_rounding=True), x)
        tl.store(out_row + offs, x, mask=ok)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_chunk(rows: int, vocab: int, block: int, device: torch.device,
                  programs_per_sm: int = 8) -> int:
    """Chunk length (a multiple of ``block``) giving about ``programs_per_sm`` programs per SM."""
    chunks = max(1, programs_per_sm * _sm_count(device) // max(rows, 1))
    return max(block, triton.cdiv(triton.cdiv(vocab, chunks), block) * block)


def guided_scores(cond, uncond, full_uncond, guide, scale, image_scale, allowed, mask_row,
                  temperature, *, block: int = 2048, chunk: int | None = None,
                  programs_per_sm: int = 8, num_warps: int = 8) -> torch.Tensor:
    """fp32 [R, V]; arguments as :func:`kernels.sampling.guided_scores_reference` (rows must
    be contiguous in V). ``block``: elements per tile (power of 2); ``chunk``: elements per
    program (a multiple of ``block``; default: about ``programs_per_sm`` programs per SM)."""
    rows, vocab = cond.shape
    out = torch.empty_like(cond)
    if rows == 0:
        return out
    streams = [t for t in (cond, uncond, full_uncond) if t is not None]
    assert all(t.stride(-1) == 1 and t.dtype == torch.float32 for t in streams)
    uncond_t = cond if uncond is None else uncond
    full_t = cond if full_uncond is None else full_uncond
    allowed = allowed.view(torch.uint8) if allowed.dtype == torch.bool else allowed
    chunk = chunk or default_chunk(rows, vocab, block, cond.device, programs_per_sm)
    n_chunks = triton.cdiv(vocab, chunk)
    stat_max = torch.empty(rows, 3, n_chunks, device=cond.device, dtype=torch.float32)
    stat_sum = torch.empty_like(stat_max)
    grid = (rows, n_chunks)
    if uncond is not None:
        _chunk_stats_kernel[grid](cond, uncond_t, full_t, guide, stat_max, stat_sum, vocab,
                                  chunk, n_chunks, cond.stride(0), uncond_t.stride(0),
                                  full_t.stride(0), BLOCK=block, HAS_FULL=full_uncond is not None,
                                  num_warps=num_warps)
    _write_scores_kernel[grid](
        cond, uncond_t, full_t, out, guide, scale, image_scale, temperature, mask_row, allowed,
        stat_max, stat_sum, vocab, chunk, n_chunks, cond.stride(0), uncond_t.stride(0),
        full_t.stride(0), out.stride(0), allowed.stride(0), BLOCK=block,
        CHUNKS=triton.next_power_of_2(n_chunks), HAS_UNCOND=uncond is not None,
        HAS_FULL=full_uncond is not None, num_warps=num_warps)
    return out
