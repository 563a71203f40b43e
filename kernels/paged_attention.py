"""Causal attention over a paged KV cache: one call serves decode rows and prefill chunks.

Layout (one pair per layer): ``k_cache, v_cache: [num_blocks, block_size, Hkv, D]``. A step's
batch has R rows; row r brings ``n_q[r] >= 1`` new query tokens, packed into ``q: [T, Hq, D]``
with ``cu_q: int32 [R+1]`` prefix sums. ``ctx_lens: int32 [R]`` is the row's whole context
length *including* its new tokens, whose K/V are already in the cache (:func:`write_kv` first).
``block_tables: int32 [R, max_blocks]`` maps logical block j of row r to a physical block;
entries past the row's context are ignored. Query token i of row r sits at position
``p = ctx_lens[r] - n_q[r] + i`` and attends to cache positions ``0..p``. Query head h reads
KV head ``h // (Hq // Hkv)`` (GQA).

:func:`paged_attention_reference` defines the result; :func:`paged_attention_triton` and
:func:`paged_attention_flash` must equal it up to rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor, skip_negative: bool = True) -> None:
    """Store this step's keys/values: token t goes to slot ``slot_mapping[t]``
    (= block * block_size + offset); a negative slot means "do not store" (padding).

    k, v: [T, Hkv, D]; slot_mapping: int64 [T]. The caches must be contiguous. With
    ``skip_negative=False`` every slot must be valid, and the copy needs no host sync (the
    engine's runner sends padding to a scratch block instead, so CUDA graphs can capture it).
    """
    if skip_negative:
        keep = slot_mapping >= 0
        slot_mapping, k, v = slot_mapping[keep], k[keep], v[keep]  # boolean indexing syncs
    slots = slot_mapping.long()
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, v.to(v_cache.dtype))


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              cu_q: torch.Tensor, ctx_lens: torch.Tensor,
                              block_tables: torch.Tensor, scale: float | None = None
                              ) -> torch.Tensor:
    """The definition: per row, gather K/V through the block table and run SDPA in fp32 with
    the causal mask shifted to the row's context. Returns [T, Hq, D] in q's dtype."""
    _, hq, d = q.shape
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    scale = d ** -0.5 if scale is None else scale
    out = torch.empty_like(q)
    cu, ctx = cu_q.tolist(), ctx_lens.tolist()
    for r, n_ctx in enumerate(ctx):
        q0, q1 = cu[r], cu[r + 1]
        if q1 == q0:
            continue
        blocks = block_tables[r, :-(-n_ctx // block_size)].long()
        # [Hkv, ctx, D] after the gather; fp32 so softmax and both products run in fp32.
        k = k_cache[blocks].flatten(0, 1)[:n_ctx].transpose(0, 1).float()
        v = v_cache[blocks].flatten(0, 1)[:n_ctx].transpose(0, 1).float()
        pos = torch.arange(n_ctx - (q1 - q0), n_ctx, device=q.device)
        mask = torch.arange(n_ctx, device=q.device)[None, :] <= pos[:, None]  # [n, ctx]
        o = F.scaled_dot_product_attention(q[q0:q1].transpose(0, 1).float()[None], k[None],
                                           v[None], attn_mask=mask, scale=scale,
                                           enable_gqa=hq != hkv)
        out[q0:q1] = o[0].transpose(0, 1).to(q.dtype)
    return out


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           cu_q: torch.Tensor, ctx_lens: torch.Tensor,
                           block_tables: torch.Tensor, scale: float | None = None,
                           **tuning) -> torch.Tensor:
    """One Triton kernel for decode and prefill rows (see :mod:`kernels.triton_paged_attention`;
    ``tuning`` passes block_n / num_splits / num_warps / num_stages overrides to it)."""
    from .triton_paged_attention import paged_attention as run  # lazy: imports triton

    return run(q, k_cache, v_cache, cu_q, ctx_lens, block_tables, scale, **tuning)


def flash_attn_available() -> bool:
    """True when the optional ``flash_attn`` package imports."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def paged_attention_flash(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          cu_q: torch.Tensor, ctx_lens: torch.Tensor,
                          block_tables: torch.Tensor, scale: float | None = None
                          ) -> torch.Tensor:
    """flash-attn's varlen kernel reading the paged cache through ``block_table``.

    flash-attn 2 accepts paged caches only when block_size is a multiple of 256; smaller
    blocks go to the Triton kernel instead. Causal masks in flash-attn >= 2.1 align to the
    bottom-right corner, which is our "query i sits at ctx - n_q + i". Untested here (flash-attn
    does not install on the CPU machine); the GPU tests cover it where it imports.
    """
    if k_cache.shape[1] % 256:
        return paged_attention_triton(q, k_cache, v_cache, cu_q, ctx_lens, block_tables, scale)
    from flash_attn import flash_attn_varlen_func

    cu_k = F.pad(torch.cumsum(ctx_lens, 0, dtype=torch.int32), (1, 0))
    n_q = cu_q[1:] - cu_q[:-1]
    max_q, max_k = int(n_q.max()), int(ctx_lens.max())  # host syncs: flash-attn wants ints
    return flash_attn_varlen_func(q, k_cache, v_cache, cu_q.int(), cu_k, max_q, max_k,
                                  softmax_scale=scale, causal=True,
                                  block_table=block_tables.int())
