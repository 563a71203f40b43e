"""The model runner: turns a step plan into one packed forward over the paged KV cache.

``StepInput`` is the small, plain record a step needs (token ids, positions, slots, block
tables, which rows produce logits); for tensor parallelism rank 0 will broadcast it to the
other ranks, which run the same ``execute``. Decode-only steps on CUDA replay a captured
graph (:mod:`.cuda_graphs`); anything else runs eagerly.

The cache holds one block more than the scheduler hands out: the last one is a scratch block
that padding rows of a graph bucket write to and read from, so no real block is touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.paged_attention import write_kv
from kernels.registry import attention_impl, attention_impl_name
from services.model.attention import AttentionBackend
from services.model.transformer import Emu35ForCausalLM

from .scheduler import StepPlan


@dataclass(frozen=True)
class StepInput:
    """One step, as lists of ints (cheap to pickle/broadcast)."""

    token_ids: list[int]
    positions: list[int]
    slots: list[int]
    cu_q: list[int]                 # [R+1] query-token offsets of each row
    ctx_lens: list[int]             # [R] context length after this step
    block_tables: list[list[int]]   # [R][*]
    logits_rows: list[int]          # indices into the packed tokens whose logits are needed

    @property
    def decode_only(self) -> bool:
        """Every row brings exactly one new token."""
        return len(self.token_ids) == len(self.ctx_lens)


def build_step_input(plan: StepPlan, block_size: int) -> StepInput:
    tokens, positions, slots, cu_q, ctx, tables, logits_rows = [], [], [], [0], [], [], []
    for c in plan.chunks:
        seq, end = c.seq, c.start + c.length
        tokens += seq.tokens[c.start:end]
        positions += range(c.start, end)
        slots += [seq.block_table[p // block_size] * block_size + p % block_size
                  for p in range(c.start, end)]
        cu_q.append(cu_q[-1] + c.length)
        ctx.append(end)
        tables.append(seq.block_table)
        if c.need_logits:
            logits_rows.append(cu_q[-1] - 1)
    return StepInput(tokens, positions, slots, cu_q, ctx, tables, logits_rows)


class PagedAttention(AttentionBackend):
    """Writes each layer's new K/V into the cache, then attends over every row's context."""

    def __init__(self, kv_cache, slots, cu_q, ctx_lens, block_tables, impl):
        self.kv_cache, self.slots, self.cu_q = kv_cache, slots, cu_q
        self.ctx_lens, self.block_tables, self.impl = ctx_lens, block_tables, impl

    def cache_for(self, layer):
        k_cache, v_cache = self.kv_cache[layer]
        return k_cache, v_cache, self.slots

    def attend(self, layer, q, k, v):
        k_cache, v_cache = self.kv_cache[layer]
        if k is not None:  # else the QK-norm kernel wrote them (cache_for)
            write_kv(k_cache, v_cache, k, v, self.slots, skip_negative=False)
        return self.impl(q, k_cache, v_cache, self.cu_q, self.ctx_lens, self.block_tables)


def kv_bytes_per_block(model: Emu35ForCausalLM, block_size: int) -> int:
    """Bytes one cache block takes on this rank over all layers (K and V)."""
    cfg = model.config
    kv_heads = cfg.num_key_value_heads // model.pg.world_size
    per_token = 2 * cfg.num_hidden_layers * kv_heads * cfg.head_dim * model.dtype.itemsize
    return per_token * block_size


class ModelRunner:
    """Owns the model, the KV cache tensors of one device and its decode graphs."""

    def __init__(self, model: Emu35ForCausalLM, num_blocks: int, block_size: int,
                 attention: str | None = None):
        self.model = model
        self.device = model.device
        self.block_size = block_size
        cfg = model.config
        kv_heads = cfg.num_key_value_heads // model.pg.world_size
        self.scratch_block = num_blocks  # the extra block (module docstring)
        shape = (num_blocks + 1, block_size, kv_heads, cfg.head_dim)
        # kv_cache[layer] = (k, v): [num_blocks + 1, block_size, kv_heads, head_dim]
        self.kv_cache = [(torch.zeros(shape, dtype=model.dtype, device=self.device),
                          torch.zeros(shape, dtype=model.dtype, device=self.device))
                         for _ in range(cfg.num_hidden_layers)]
        self.attention_name = attention_impl_name(self.device, prefer=attention)
        self.attention = attention_impl(self.device, prefer=self.attention_name)
        self.graphs = None  # DecodeGraphs once captured

    @property
    def can_capture_graphs(self) -> bool:
        # The reference and flash paths read lengths on the host, which a graph cannot.
        return self.device.type == "cuda" and self.attention_name == "triton"

    def capture_decode_graphs(self, max_rows: int) -> None:
        """Capture decode-only steps at bucketed batch sizes up to ``max_rows`` (CUDA only)."""
        from .cuda_graphs import DecodeGraphs

        if not self.can_capture_graphs:
            raise RuntimeError("CUDA graphs need a CUDA device and the triton attention")
        self.graphs = DecodeGraphs(self, max_rows)

    def attention_for(self, slots, cu_q, ctx_lens, tables) -> PagedAttention:
        return PagedAttention(self.kv_cache, slots, cu_q, ctx_lens, tables, self.attention)

    def stage(self, step: StepInput) -> None:
        """Optional, before ``execute(step)``: the host work of a graph step that does not need
        its token ids (which may still be stand-ins, see engine.py)."""
        if self.graphs is not None and step.decode_only and self.graphs.fits(step):
            self.graphs.stage(step)

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor:
        """Run one packed forward; returns fp32 logits [len(step.logits_rows), vocab]."""
        if self.graphs is not None and step.decode_only and self.graphs.fits(step):
            return self.graphs.replay(step)
        dev = self.device

        def ints(x, dtype=torch.int32):
            return torch.tensor(x, dtype=dtype, device=dev)

        width = max(len(t) for t in step.block_tables)
        tables = ints([list(t) + [0] * (width - len(t)) for t in step.block_tables])
        attn = self.attention_for(ints(step.slots, torch.int64), ints(step.cu_q),
                                  ints(step.ctx_lens), tables)
        hidden = self.model(ints(step.token_ids, torch.int64), ints(step.positions, torch.int64), attn)
        return self.model.compute_logits(hidden[ints(step.logits_rows, torch.int64)])
