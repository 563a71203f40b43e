"""Factory for paged-attention test batches: scattered block tables, NaN-poisoned caches."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.paged_attention import write_kv


@dataclass
class PagedBatch:
    """One step's attention inputs plus each row's keys/values as written, for naive checks."""

    q: torch.Tensor             # [T, Hq, D]
    k_cache: torch.Tensor       # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    cu_q: torch.Tensor          # int32 [R+1]
    ctx_lens: torch.Tensor      # int32 [R]
    block_tables: torch.Tensor  # int32 [R, max_blocks]
    keys: list[torch.Tensor]    # per row [ctx, Hkv, D]
    values: list[torch.Tensor]

    @property
    def args(self) -> tuple:
        return (self.q, self.k_cache, self.v_cache, self.cu_q, self.ctx_lens, self.block_tables)


def make_batch(n_q: list[int], ctx: list[int], *, hq: int, hkv: int, d: int, block_size: int,
               dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
               spare_blocks: int = 3) -> PagedBatch:
    """Rows with ``n_q[r]`` new tokens and ``ctx[r]`` total context. Physical blocks are a
    random permutation (non-contiguous), unused table entries are random, and every cache
    slot no row owns holds NaN, so reading one shows up in the output."""
    assert all(1 <= n <= c for n, c in zip(n_q, ctx))
    gen = torch.Generator().manual_seed(seed)
    need = [-(-c // block_size) for c in ctx]
    num_blocks = sum(need) + spare_blocks
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.randint(0, num_blocks, (len(ctx), max(need) + 2), generator=gen)
    used = 0
    for r, n in enumerate(need):
        tables[r, :n] = perm[used:used + n]
        used += n
    shape = (num_blocks, block_size, hkv, d)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    keys = [torch.randn(c, hkv, d, generator=gen).to(dtype) for c in ctx]
    values = [torch.randn(c, hkv, d, generator=gen).to(dtype) for c in ctx]
    pos = [torch.arange(c) for c in ctx]
    slots = torch.cat([tables[r, p // block_size] * block_size + p % block_size
                       for r, p in enumerate(pos)])
    # A padding token with slot -1 must be skipped, not written anywhere.
    slots = torch.cat([slots, torch.tensor([-1])])
    junk = torch.full((1, hkv, d), 7.0, dtype=dtype)
    write_kv(k_cache, v_cache, torch.cat(keys + [junk]), torch.cat(values + [junk]), slots)
    q = torch.randn(sum(n_q), hq, d, generator=gen).to(dtype)
    cu_q = torch.tensor([0] + n_q, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    to = dict(device=device)
    return PagedBatch(q.to(**to), k_cache.to(**to), v_cache.to(**to), cu_q.to(**to),
                      torch.tensor(ctx, dtype=torch.int32, **to), tables.int().to(**to),
                      keys, values)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64 (NaN propagates, so NaN never passes a < check)."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())
