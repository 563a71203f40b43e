"""Triton paged attention: one kernel for decode rows and prefill chunks.

Each program owns one *query tile* (up to BLOCK_Q consecutive new tokens of one row) and one
KV head, and holds all G = Hq / Hkv query heads of that KV head together: its M dimension is
``BLOCK_Q * G`` (token-major), so every KV tile it loads serves the whole GQA group and each KV
byte is read once per KV head -- what decode, bound by memory bandwidth, needs. It streams
the row's keys in BLOCK_N tiles, gathered through the block table (a tile may span several
cache blocks, so BLOCK_N is independent of block_size), with an fp32 online softmax.

Split-K (flash-decoding): with few programs (small decode batches, long contexts) the key
range of each tile is cut into NUM_SPLITS pieces run by separate programs; each writes its
normalised partial output and log-sum-exp, and a second kernel merges them.

Query tiles are laid out without a host sync: row r's tiles start at ``cu_q[r] // BLOCK_Q + r``
(a gap of at most one tile per row), so ``T // BLOCK_Q + R`` programs cover any batch; a
program finds its row by binary search over ``cu_q`` and returns if it landed in a gap.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _find_row(cu_q_ptr, tile, num_rows, BLOCK_Q: tl.constexpr):
    """The last row r with cu_q[r] // BLOCK_Q + r <= tile."""
    lo = 0
    hi = num_rows
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(cu_q_ptr + mid) // BLOCK_Q + mid
        if start <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _attend_keys(acc, m_i, l_i, q_tile, q_pos, start, hi, bt_row, k_ptr, v_ptr, kvh, scale_log2,
                 s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, BLOCK_N: tl.constexpr,
                 HEAD_DIM: tl.constexpr, KV_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 MASKED: tl.constexpr):
    """One online-softmax step over keys [start, start + BLOCK_N), gathered through the
    block table. MASKED: some keys lie past ``hi`` or past some query's position."""
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    n_ok = offs_n < hi
    if MASKED:
        block = tl.load(bt_row + offs_n // KV_BLOCK, mask=n_ok, other=0).to(tl.int64)
    else:
        block = tl.load(bt_row + offs_n // KV_BLOCK).to(tl.int64)
    within = offs_n % KV_BLOCK
    k_addr = k_ptr + (block * s_kb + within * s_ks + kvh * s_kh)[:, None] + offs_d[None, :]
    v_addr = v_ptr + (block * s_vb + within * s_vs + kvh * s_vh)[:, None] + offs_d[None, :]
    if MASKED:
        k = tl.load(k_addr, mask=n_ok[:, None], other=0.0)
        v = tl.load(v_addr, mask=n_ok[:, None], other=0.0)
    else:
        k = tl.load(k_addr)
        v = tl.load(v_addr)
    s = tl.dot(q_tile, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    if MASKED:
        visible = (offs_n[None, :] <= q_pos[:, None]) & n_ok[None, :]
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


# Row and token counts change every step: specialising on them (== 1, % 16) would compile a
# new variant mid-traffic (seen: 1.6 s on a 331-token chunk), so they stay plain ints.
@triton.jit(do_not_specialize=["num_rows", "num_tokens"])
def _paged_attn_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, part_o_ptr, part_lse_ptr,
    cu_q_ptr, ctx_ptr, bt_ptr,
    scale_log2, num_rows, num_tokens,
    s_qt, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_ot, s_oh, s_bt,
    G: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, KV_BLOCK: tl.constexpr, NUM_SPLITS: tl.constexpr,
    ONE_TILE_PER_ROW: tl.constexpr, DOT_PRECISION: tl.constexpr, UNMASKED_BULK: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    if ONE_TILE_PER_ROW:  # decode-only batch: tile == row, no search
        row = tile
        local = 0
    else:
        row = _find_row(cu_q_ptr, tile, num_rows, BLOCK_Q)
        local = tile - (tl.load(cu_q_ptr + row) // BLOCK_Q + row)
    q_start = tl.load(cu_q_ptr + row)
    n_q = tl.load(cu_q_ptr + row + 1) - q_start
    if local * BLOCK_Q >= n_q:
        return
    ctx = tl.load(ctx_ptr + row)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    qi = local * BLOCK_Q + offs_m // G          # token index inside the row
    head = kvh * G + offs_m % G                 # query head
    q_ok = (qi < n_q) & (offs_m < BLOCK_Q * G)
    q_pos = ctx - n_q + qi                      # cache position of each M row
    q_tile = tl.load(q_ptr + (q_start + qi)[:, None].to(tl.int64) * s_qt
                     + head[:, None] * s_qh + offs_d[None, :], mask=q_ok[:, None], other=0.0)

    # Keys this tile needs: up to its last query's position; this split's share of them.
    kv_end = tl.minimum(ctx, ctx - n_q + tl.minimum(n_q, (local + 1) * BLOCK_Q))
    chunk = tl.cdiv(tl.cdiv(kv_end, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, kv_end)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: fully masked rows never give NaN
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    bt_row = bt_ptr + row.to(tl.int64) * s_bt
    bulk_end = lo
    if UNMASKED_BULK:
        # Whole key tiles that every query of this tile sees go without masks; the rest (the
        # causal diagonal and the ragged end) with them. Costs registers (two loop bodies),
        # so decode, bandwidth-bound, leaves it off by default.
        full_end = tl.minimum(hi, ctx - n_q + local * BLOCK_Q + 1)
        bulk_end = lo + tl.maximum(full_end - lo, 0) // BLOCK_N * BLOCK_N
        for start in range(lo, bulk_end, BLOCK_N):
            acc, m_i, l_i = _attend_keys(
                acc, m_i, l_i, q_tile, q_pos, start, hi, bt_row, k_ptr, v_ptr, kvh, scale_log2,
                s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, BLOCK_N, HEAD_DIM, KV_BLOCK, DOT_PRECISION,
                MASKED=False)
    for start in range(bulk_end, hi, BLOCK_N):
        acc, m_i, l_i = _attend_keys(
            acc, m_i, l_i, q_tile, q_pos, start, hi, bt_row, k_ptr, v_ptr, kvh, scale_log2,
            s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, BLOCK_N, HEAD_DIM, KV_BLOCK, DOT_PRECISION,
            MASKED=True)

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tok = (q_start + qi).to(tl.int64)
    if NUM_SPLITS == 1:
        tl.store(o_ptr + tok[:, None] * s_ot + head[:, None] * s_oh + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=q_ok[:, None])
    else:
        # partials: [NUM_SPLITS, T, Hq, D] fp32 and lse (log2 units) [NUM_SPLITS, T, Hq]
        hq = G * tl.num_programs(1)
        lse_idx = (split * num_tokens + tok) * hq + head
        lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf"))
        tl.store(part_lse_ptr + lse_idx, lse, mask=q_ok)
        tl.store(part_o_ptr + lse_idx[:, None] * HEAD_DIM + offs_d[None, :], out,
                 mask=q_ok[:, None])


@triton.jit
def _merge_splits_kernel(part_o_ptr, part_lse_ptr, o_ptr, num_tokens, num_heads, s_ot, s_oh,
                         NUM_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, NUM_SPLITS)
    offs_d = tl.arange(0, HEAD_DIM)
    idx = (offs_s * num_tokens + tok) * num_heads + head
    lse = tl.load(part_lse_ptr + idx)  # split 0 always sees key 0, so the max is finite
    w = tl.exp2(lse - tl.max(lse, 0))
    o = tl.load(part_o_ptr + idx[:, None] * HEAD_DIM + offs_d[None, :])
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(o_ptr + tok * s_ot + head * s_oh + offs_d, out.to(o_ptr.dtype.element_ty))


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    return torch.cuda.get_device_properties(device).multi_processor_count


def _default_splits(programs: int, device: torch.device) -> int:
    """Enough splits to put ~2 programs on every multiprocessor, at most 16."""
    want = 2 * _sm_count(device)
    if programs >= want:
        return 1
    return min(16, triton.next_power_of_2(triton.cdiv(want, programs)))


def paged_attention(q, k_cache, v_cache, cu_q, ctx_lens, block_tables, scale=None, *,
                    block_n=None, num_splits=None, num_warps=None, num_stages=None,
                    unmasked_bulk=None):
    """Launch the kernel; same contract as :func:`kernels.paged_attention_reference`.

    A decode-only batch (T == R, so every row has one token) gets small query tiles and,
    when its grid would leave multiprocessors idle, split-K; anything else gets 128-wide tiles
    (BLOCK_M = BLOCK_Q * G), no split, and mask-free key tiles below the causal diagonal.
    Overrides are for tuning and tests.
    """
    num_tokens, hq, d = q.shape
    _, block_size, hkv, _ = k_cache.shape
    num_rows = ctx_lens.shape[0]
    group = hq // hkv
    assert hq == group * hkv and d in (16, 32, 64, 128, 256), (hq, hkv, d)
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and q.stride(-1) == 1
    scale = d ** -0.5 if scale is None else scale
    decode_only = num_tokens == num_rows
    block_m = max(16, triton.next_power_of_2(group)) if decode_only else max(128, group)
    block_m = triton.next_power_of_2(block_m)
    block_q = block_m // group
    tiles = num_rows if decode_only else num_tokens // block_q + num_rows
    if num_splits is None:
        num_splits = _default_splits(tiles * hkv, q.device) if decode_only else 1
    # Measured on H100 (kernels/NOTES.md): decode is flat across tile shapes and loses with
    # more warps; prefill gains 7% from 128-key tiles (160 KB of shared memory).
    if decode_only:
        block_n, num_warps = block_n or 64, num_warps or 4
        num_stages = num_stages or (3 if d <= 128 else 2)
    else:
        # 128-key tiles need ~160 KB of shared memory at 2 bytes x 128 dims; wider rows
        # (fp32, or head_dim 256) take 32-key tiles to stay under the 227 KB limit.
        wide = d * q.element_size() > 256
        block_n, num_warps = block_n or (32 if wide else 128), num_warps or 8
        num_stages = num_stages or 2
    unmasked_bulk = (not decode_only) if unmasked_bulk is None else unmasked_bulk

    out = torch.empty_like(q)
    if num_splits > 1:
        part_o = torch.empty(num_splits, num_tokens, hq, d, device=q.device, dtype=torch.float32)
        part_lse = torch.empty(num_splits, num_tokens, hq, device=q.device, dtype=torch.float32)
    else:
        part_o = part_lse = out  # unused
    cu_q, ctx_lens, block_tables = cu_q.int(), ctx_lens.int(), block_tables.int()
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _paged_attn_kernel[(tiles, hkv, num_splits)](
        q, k_cache, v_cache, out, part_o, part_lse, cu_q, ctx_lens, block_tables,
        scale * LOG2E, num_rows, num_tokens,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        out.stride(0), out.stride(1), block_tables.stride(0),
        G=group, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=d,
        KV_BLOCK=block_size, NUM_SPLITS=num_splits, ONE_TILE_PER_ROW=decode_only,
        DOT_PRECISION=precision, UNMASKED_BULK=unmasked_bulk, num_warps=num_warps,
        num_stages=num_stages)
    if num_splits > 1:
        _merge_splits_kernel[(num_tokens, hq)](
            part_o, part_lse, out, num_tokens, hq, out.stride(0), out.stride(1),
            NUM_SPLITS=num_splits, HEAD_DIM=d, num_warps=4)
    return out
