"""Triton draw for top-k rows without top-p (image rows): no sort, no topk, three launches.

Definition: :func:`kernels.token_draw.draw_tokens_reference` (the kept set is every finite
score >= the k-th largest, ties kept; fixed-point weights; inverse CDF in id order). The grid is
(row, vocabulary chunk) for every launch, chunks made of whole tiles, so two rows still spread
over the SMs. The last program of a row to finish a launch (an arrival counter) does that
row's serial step; nothing waits on another program, so the interpreter can run it too.

1. ``_range_kernel``: each chunk's max and min finite score.
2. ``_histogram_kernel``: a 256-bin histogram of the finite scores, bins evenly spaced over
   the row's [min, max] (a monotone map, so bins are ordered like scores). The last program
   finds the bin holding the k-th largest score and its rank inside that bin; a row with
   fewer than k finite scores keeps them all (bin -1).
3. ``_draw_kernel``: scores in bins above it are kept for sure: their weights go straight
   into per-tile sums. Scores in that bin are appended to a per-row list (usually a few
   hundred ids). The last program selects the exact k-th largest in the list by a radix
   select on the order-preserving uint32 image of the fp32 bits (4 x 8-bit histograms), adds
   the list's kept weights to the tile sums, finds the tile holding ``u * total`` and walks
   it for the token.

Tile sums are int64 and exact, so the cumulative weight at every id equals the reference's
cumsum, and the token is the reference's ``searchsorted(cum.double(), x, right=True)``.
Weights use __nv_exp on the GPU (libdevice, as torch's CUDA double exp) and numpy's exp under
the interpreter (as torch's CPU exp); rounding half to even is done by adding and subtracting
2^52, exact for weights in [0, 2^40] (no libdevice call, so it runs under the interpreter).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

if os.environ.get("TRITON_INTERPRET") == "1":
    fp64_math = tl  # the interpreter runs tl.exp as numpy's exp
else:
    from triton.language.extra import libdevice as fp64_math  # __nv_exp for float64

NEG_INF = tl.constexpr(float("-inf"))
NUM_BINS = tl.constexpr(256)
WEIGHT_SCALE = tl.constexpr(2.0 ** 40)  # kernels.token_draw.WEIGHT_BITS
ROUND_SHIFT = tl.constexpr(2.0 ** 52)
# Workspace (int64 [n, WORKSPACE_COLS + tiles], zeroed per call): the histogram, then scalars.
ARRIVED_HIST, ARRIVED_DRAW, SPLIT_BIN, SPLIT_RANK, LIST_LEN = (tl.constexpr(256 + c)
                                                              for c in range(5))
WORKSPACE_COLS = tl.constexpr(256 + 8)  # then the per-tile weight sums


@triton.jit
def _row_of(rows_ptr, i, GATHER: tl.constexpr):
    if GATHER:
        return tl.load(rows_ptr + i)
    return i.to(tl.int64)


@triton.jit
def _order_key(s):
    """int64 in [0, 2^32): the fp32 score's order-preserving image (-0.0 maps as +0.0)."""
    bits = tl.where(s == 0.0, 0.0, s).to(tl.int32, bitcast=True)
    signed = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return signed.to(tl.int64) + 2147483648


@triton.jit
def _weights(s, top, keep):
    """int64: round(2^40 * exp(s - top)) in float64 where ``keep``, else 0."""
    d = tl.where(keep, s, top).to(tl.float64) - top.to(tl.float64)
    scaled = fp64_math.exp(d) * WEIGHT_SCALE
    rounded = (scaled + ROUND_SHIFT) - ROUND_SHIFT  # half to even, as torch.round
    return tl.where(keep, rounded.to(tl.int64), 0)


@triton.jit
def _row_range(stats_ptr, i, n_chunks, CHUNKS: tl.constexpr):
    """The row's finite (min, max) from its chunks' statistics ((0, 0) when none)."""
    offs = tl.arange(0, CHUNKS)
    ok = offs < n_chunks
    hi = tl.max(tl.load(stats_ptr + (2 * i) * n_chunks + offs, mask=ok, other=NEG_INF), 0)
    lo = tl.min(tl.load(stats_ptr + (2 * i + 1) * n_chunks + offs, mask=ok,
                        other=float("inf")), 0)
    none = hi == NEG_INF
    return tl.where(none, 0.0, lo), tl.where(none, 0.0, hi)


@triton.jit
def _bin_scale(lo, hi):
    width = hi.to(tl.float64) - lo.to(tl.float64)
    return tl.where(width > 0, NUM_BINS / tl.where(width > 0, width, 1.0), 0.0)


@triton.jit
def _bins(s, finite, lo, scale):
    """int32 bin in [0, 256) of each finite score: monotone in the score."""
    t = (tl.where(finite, s, lo).to(tl.float64) - lo.to(tl.float64)) * scale
    return tl.minimum(t.to(tl.int32), NUM_BINS - 1)


@triton.jit
def _split(hist, k):
    """(bin, rank in bin) of the k-th largest of the values counted in ``hist`` (bins in
    ascending value order; k <= the total)."""
    total = tl.sum(hist, 0)
    at_or_above = total - tl.cumsum(hist, 0) + hist
    b = tl.sum((at_or_above >= k).to(tl.int32), 0) - 1
    bins = tl.arange(0, NUM_BINS)
    above = tl.sum(tl.where(bins == b, at_or_above - hist, 0), 0)
    return b, k - above


@triton.jit
def _range_kernel(scores_ptr, rows_ptr, stats_ptr, V, s_row, tiles_per_chunk, n_chunks,
                  BLOCK: tl.constexpr, GATHER: tl.constexpr):
    i = tl.program_id(0)
    j = tl.program_id(1)
    row_ptr = scores_ptr + _row_of(rows_ptr, i, GATHER) * s_row
    hi = tl.full([], NEG_INF, tl.float32)
    lo = tl.full([], float("inf"), tl.float32)
    for t in range(j * tiles_per_chunk, tl.minimum((j + 1) * tiles_per_chunk, tl.cdiv(V, BLOCK))):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        s = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF)
        hi = tl.maximum(hi, tl.max(s, 0))
        lo = tl.minimum(lo, tl.min(tl.where(s > NEG_INF, s, float("inf")), 0))
    tl.store(stats_ptr + (2 * i) * n_chunks + j, hi)
    tl.store(stats_ptr + (2 * i + 1) * n_chunks + j, lo)


@triton.jit
def _histogram_kernel(scores_ptr, rows_ptr, top_k_ptr, stats_ptr, ws_ptr, V, s_row, s_ws,
                      tiles_per_chunk, n_chunks, BLOCK: tl.constexpr, CHUNKS: tl.constexpr,
                      GATHER: tl.constexpr):
    i = tl.program_id(0)
    j = tl.program_id(1)
    row = _row_of(rows_ptr, i, GATHER)
    row_ptr = scores_ptr + row * s_row
    ws = ws_ptr + i.to(tl.int64) * s_ws
    lo, hi = _row_range(stats_ptr, i, n_chunks, CHUNKS)
    scale = _bin_scale(lo, hi)
    hist = tl.zeros([NUM_BINS], tl.int32)
    for t in range(j * tiles_per_chunk, tl.minimum((j + 1) * tiles_per_chunk, tl.cdiv(V, BLOCK))):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        s = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF)
        finite = s > NEG_INF
        if tl.max(finite.to(tl.int32), 0) > 0:  # grammar masks leave whole tiles -inf
            hist += tl.histogram(_bins(s, finite, lo, scale), NUM_BINS, mask=finite)
    bins = tl.arange(0, NUM_BINS)
    tl.atomic_add(ws + bins, hist.to(tl.int64), mask=hist != 0)
    tl.debug_barrier()  # every thread's adds before the arrival (the last program reads them)
    if tl.atomic_add(ws + ARRIVED_HIST, 1) == n_chunks - 1:
        counts = tl.load(ws + bins, cache_modifier=".cg")
        k = tl.load(top_k_ptr + row)
        b, rank = _split(counts, k)
        fewer = tl.sum(counts, 0) < k  # fewer finite scores than k: keep them all
        tl.store(ws + SPLIT_BIN, tl.where(fewer, -1, b).to(tl.int64))
        tl.store(ws + SPLIT_RANK, tl.where(fewer, 0, rank).to(tl.int64))


@triton.jit
def _draw_kernel(scores_ptr, rows_ptr, uniforms_ptr, stats_ptr, ws_ptr, list_ptr, out_ptr, V,
                 s_row, s_ws, s_list, tiles_per_chunk, n_chunks, BLOCK: tl.constexpr,
                 CHUNKS: tl.constexpr, TILES: tl.constexpr, GATHER: tl.constexpr):
    i = tl.program_id(0)
    j = tl.program_id(1)
    row = _row_of(rows_ptr, i, GATHER)
    row_ptr = scores_ptr + row * s_row
    ws = ws_ptr + i.to(tl.int64) * s_ws
    ids_ptr = list_ptr + i.to(tl.int64) * s_list
    lo, hi = _row_range(stats_ptr, i, n_chunks, CHUNKS)
    scale = _bin_scale(lo, hi)
    split = tl.load(ws + SPLIT_BIN)
    tile_sums = ws + WORKSPACE_COLS
    for t in range(j * tiles_per_chunk, tl.minimum((j + 1) * tiles_per_chunk, tl.cdiv(V, BLOCK))):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        s = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF)
        finite = s > NEG_INF
        if tl.max(finite.to(tl.int32), 0) > 0:
            b = _bins(s, finite, lo, scale)
            tl.store(tile_sums + t, tl.sum(_weights(s, hi, finite & (b > split)), 0))
            undecided = finite & (b == split)
            n = tl.sum(undecided.to(tl.int32), 0)
            if n > 0:
                start = tl.atomic_add(ws + LIST_LEN, n.to(tl.int64))
                pos = start + tl.cumsum(undecided.to(tl.int64), 0) - 1
                tl.store(ids_ptr + pos, offs, mask=undecided)
    tl.debug_barrier()  # every thread's stores before the arrival (the last program reads them)
    if tl.atomic_add(ws + ARRIVED_DRAW, 1) == n_chunks - 1:
        n_ids = tl.load(ws + LIST_LEN, cache_modifier=".cg")
        kth = _select_in_list(row_ptr, ids_ptr, n_ids, tl.load(ws + SPLIT_RANK), BLOCK)
        _add_list_weights(row_ptr, ids_ptr, n_ids, kth, hi, tile_sums, BLOCK)
        tl.debug_barrier()
        token = _inverse_cdf(row_ptr, tile_sums, kth, hi, tl.load(uniforms_ptr + row), V,
                             BLOCK, TILES)
        tl.store(out_ptr + row, token)


@triton.jit
def _select_in_list(row_ptr, ids_ptr, n_ids, rank, BLOCK: tl.constexpr):
    """The order key of the rank-th largest score among the listed ids (radix select, 8 bits a
    pass, most significant first); 0 (keep every finite score) for an empty list."""
    prefix = tl.zeros([], tl.int64)
    for level in tl.static_range(4):
        shift = 24 - 8 * level
        hist = tl.zeros([NUM_BINS], tl.int32)
        for start in range(0, n_ids, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            ok = offs < n_ids
            ids = tl.load(ids_ptr + offs, mask=ok, other=0, cache_modifier=".cg")
            key = _order_key(tl.load(row_ptr + ids, mask=ok, other=0.0))
            if level > 0:
                ok = ok & ((key >> (shift + 8)) == (prefix >> (shift + 8)))
            hist += tl.histogram(((key >> shift) & 255).to(tl.int32), NUM_BINS, mask=ok)
        digit, rank = _split(hist, rank)
        prefix += digit.to(tl.int64) << shift
    return tl.where(n_ids > 0, prefix, 0)


@triton.jit
def _add_list_weights(row_ptr, ids_ptr, n_ids, kth, top, tile_sums, BLOCK: tl.constexpr):
    for start in range(0, n_ids, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < n_ids
        ids = tl.load(ids_ptr + offs, mask=ok, other=0, cache_modifier=".cg")
        s = tl.load(row_ptr + ids, mask=ok, other=NEG_INF)
        keep = ok & (_order_key(s) >= kth)
        tl.atomic_add(tile_sums + ids // BLOCK, _weights(s, top, keep), mask=keep)


@triton.jit
def _inverse_cdf(row_ptr, tile_sums, kth, top, u, V, BLOCK: tl.constexpr, TILES: tl.constexpr):
    """The first id whose cumulative weight, as float64, exceeds ``u * total`` (V - 1 when
    none does): the tile from the exact tile sums, then the id inside it."""
    n_tiles = tl.cdiv(V, BLOCK)
    tiles = tl.arange(0, TILES)
    sums = tl.load(tile_sums + tiles, mask=tiles < n_tiles, other=0, cache_modifier=".cg")
    x = u * tl.sum(sums, 0).to(tl.float64)
    cum = tl.cumsum(sums, 0)
    t = tl.sum(((tiles < n_tiles) & (cum.to(tl.float64) <= x)).to(tl.int32), 0)
    t_in = tl.minimum(t, n_tiles - 1)
    before = tl.sum(tl.where(tiles == t_in, cum - sums, 0), 0)
    offs = t_in * BLOCK + tl.arange(0, BLOCK)
    s = tl.load(row_ptr + offs, mask=offs < V, other=NEG_INF)
    keep = (s > NEG_INF) & (_order_key(s) >= kth)
    cum_in = before + tl.cumsum(_weights(s, top, keep), 0)
    first = tl.min(tl.where((offs < V) & (cum_in.to(tl.float64) > x), offs, V), 0)
    return tl.where(t < n_tiles, tl.minimum(first, V - 1), V - 1).to(tl.int64)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    return torch.cuda.get_device_properties(device).multi_processor_count


def draw_top_k(scores: torch.Tensor, top_k: torch.Tensor, uniforms: torch.Tensor,
               out: torch.Tensor, rows: torch.Tensor | None = None, *, block: int = 2048,
               programs_per_sm: int = 4, num_warps: int = 8) -> torch.Tensor:
    """Writes ``out[r]`` (int64 [R]) for each row r in ``rows`` (int64 on the device; None: all
    rows): :func:`kernels.token_draw.draw_tokens_reference` for rows with 1 < top_k[r] < V
    and no top-p. scores: fp32 [R, V], rows contiguous; top_k int64, uniforms float64, [R].
    ``block``: ids per tile (a power of 2); about ``programs_per_sm`` programs per SM."""
    assert scores.dtype == torch.float32 and scores.stride(-1) == 1
    vocab = scores.shape[-1]
    n = scores.shape[0] if rows is None else rows.numel()
    if n == 0:
        return out
    tiles = triton.cdiv(vocab, block)
    chunks = max(1, min(tiles, programs_per_sm * _sm_count(scores.device) // n))
    per_chunk = triton.cdiv(tiles, chunks)
    n_chunks = triton.cdiv(tiles, per_chunk)
    dev = scores.device
    stats = torch.empty(n, 2, n_chunks, device=dev, dtype=torch.float32)
    ws = torch.zeros(n, WORKSPACE_COLS.value + tiles, device=dev, dtype=torch.int64)
    ids = torch.empty(n, vocab, device=dev, dtype=torch.int32)
    gather = rows is not None
    rows = rows if gather else top_k  # any pointer: unread without GATHER
    grid = (n, n_chunks)
    common = dict(BLOCK=block, GATHER=gather, num_warps=num_warps)
    chunk_args = (per_chunk, n_chunks)
    _range_kernel[grid](scores, rows, stats, vocab, scores.stride(0), *chunk_args, **common)
    chunks_pow2 = triton.next_power_of_2(n_chunks)
    _histogram_kernel[grid](scores, rows, top_k, stats, ws, vocab, scores.stride(0),
                            ws.stride(0), *chunk_args, CHUNKS=chunks_pow2, **common)
    _draw_kernel[grid](scores, rows, uniforms, stats, ws, ids, out, vocab, scores.stride(0),
                       ws.stride(0), ids.stride(0), *chunk_args, CHUNKS=chunks_pow2,
                       TILES=triton.next_power_of_2(tiles), **common)
    return out
