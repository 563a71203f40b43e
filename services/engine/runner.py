"""The model runner: turns a step plan into one packed forward over the paged KV cache.

``StepInput`` is the small, plain record a step needs (token ids, positions, slots, block
tables, which rows produce logits); for tensor parallelism rank 0 will broadcast it to the
other ranks, which run the same ``execute``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.paged_attention import write_kv
from kernels.registry import attention_impl
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
        tables.append(list(seq.block_table))
        if c.need_logits:
            logits_rows.append(cu_q[-1] - 1)
    return StepInput(tokens, positions, slots, cu_q, ctx, tables, logits_rows)


class PagedAttention(AttentionBackend):
    """Writes each layer's new K/V into the cache, then attends over every row's context."""

    def __init__(self, kv_cache, slots, cu_q, ctx_lens, block_tables, impl):
        self.kv_cache, self.slots, self.cu_q = kv_cache, slots, cu_q
        self.ctx_lens, self.block_tables, self.impl = ctx_lens, block_tables, impl

    def attend(self, layer, q, k, v):
        k_cache, v_cache = self.kv_cache[layer]
        write_kv(k_cache, v_cache, k, v, self.slots)
        return self.impl(q, k_cache, v_cache, self.cu_q, self.ctx_lens, self.block_tables)


class ModelRunner:
    """Owns the model and the KV cache tensors of one device."""

    def __init__(self, model: Emu35ForCausalLM, num_blocks: int, block_size: int,
                 attention: str | None = None):
        self.model = model
        self.device = model.device
        cfg = model.config
        kv_heads = cfg.num_key_value_heads // model.pg.world_size
        shape = (num_blocks, block_size, kv_heads, cfg.head_dim)
        # kv_cache[layer] = (k, v): [num_blocks, block_size, kv_heads, head_dim]
        self.kv_cache = [(torch.zeros(shape, dtype=model.dtype, device=self.device),
                          torch.zeros(shape, dtype=model.dtype, device=self.device))
                         for _ in range(cfg.num_hidden_layers)]
        self.attention = attention_impl(self.device, prefer=attention)

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor:
        """Run one packed forward; returns fp32 logits [len(step.logits_rows), vocab]."""
        dev = self.device

        def ints(x, dtype=torch.int32):
            return torch.tensor(x, dtype=dtype, device=dev)

        width = max(len(t) for t in step.block_tables)
        tables = ints([t + [0] * (width - len(t)) for t in step.block_tables])
        attn = PagedAttention(self.kv_cache, ints(step.slots, torch.int64), ints(step.cu_q),
                              ints(step.ctx_lens), tables, self.attention)
        hidden = self.model(ints(step.token_ids, torch.int64), ints(step.positions, torch.int64), attn)
        return self.model.compute_logits(hidden[ints(step.logits_rows, torch.int64)])
