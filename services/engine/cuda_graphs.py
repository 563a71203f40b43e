"""CUDA graphs for decode-only steps (DESIGN.md §6): a 64-layer decode step launches
hundreds of small kernels, which at a few rows cost more in launch latency than their work.

Each bucket size b gets one graph that runs the whole forward plus the head for b rows out of
static buffers. A step of n <= b rows fills the first n rows and pads the rest with a dummy
token that writes to and reads from the runner's scratch block (ctx 1), so padding never
touches a real block. All graphs share one memory pool and one logits buffer.
"""
from __future__ import annotations

import numpy as np
import torch

from .runner import ModelRunner, StepInput


def bucket_sizes(max_rows: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to max_rows (which is always included)."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_rows]
    sizes += list(range(8, max_rows, 8))
    return sorted(set(sizes) | {max_rows})


class DecodeGraphs:
    """Captured decode steps of one runner, replayed by :meth:`replay`."""

    def __init__(self, runner: ModelRunner, max_rows: int):
        model, dev = runner.model, runner.device
        self.runner = runner
        self.buckets = bucket_sizes(max_rows)
        self.width = -(-model.config.max_position_embeddings // runner.block_size)
        b = self.buckets[-1]
        pad_slot = runner.scratch_block * runner.block_size
        # meta rows: token ids, positions, slots, context lengths (int64 [4, b]).
        self.host_meta = torch.zeros(4, b, dtype=torch.int64).pin_memory()
        self.host_tables = torch.full((b, self.width), runner.scratch_block,
                                      dtype=torch.int32).pin_memory()
        self.pad = torch.tensor([0, 0, pad_slot, 1], dtype=torch.int64)
        self.host_meta[:] = self.pad[:, None]
        self.meta = self.host_meta.to(dev)
        self.tables = self.host_tables.to(dev)
        self.cu_q = torch.arange(b + 1, dtype=torch.int32, device=dev)
        self.ctx32 = torch.ones(b, dtype=torch.int32, device=dev)
        self.logits = torch.zeros(b, model.config.vocab_size, dtype=torch.float32, device=dev)
        self.pool = torch.cuda.graph_pool_handle()
        self.copied = torch.cuda.Event()  # the last step's uploads left the pinned buffers
        self.staged: StepInput | None = None  # the step whose buffers stage() wrote
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        for size in reversed(self.buckets):  # largest first: later graphs reuse its pool
            self.graphs[size] = self._capture(size)

    def _forward(self, b: int) -> None:
        ids, pos, slots, ctx = self.meta[:, :b]
        self.ctx32[:b].copy_(ctx)
        attn = self.runner.attention_for(slots, self.cu_q[:b + 1], self.ctx32[:b], self.tables[:b])
        hidden = self.runner.model(ids, pos, attn)
        self.logits[:b].copy_(self.runner.model.compute_logits(hidden))

    @torch.inference_mode()
    def _capture(self, b: int) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (Triton JIT, cuBLAS handles) off the capture
            for _ in range(2):
                self._forward(b)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self._forward(b)
        return graph

    def fits(self, step: StepInput) -> bool:
        return (len(step.ctx_lens) <= self.buckets[-1]
                and max(len(t) for t in step.block_tables) <= self.width)

    def stage(self, step: StepInput) -> None:
        """Write everything of a step but its token ids into the pinned buffers: the engine
        calls this before the previous step's tokens are known, to keep it off the time the
        device waits."""
        n = len(step.ctx_lens)
        b = next(s for s in self.buckets if s >= n)
        self.copied.synchronize()  # the previous upload left the buffers (it ran first)
        meta = self.host_meta.numpy()
        meta[1, :n], meta[2, :n], meta[3, :n] = step.positions, step.slots, step.ctx_lens
        meta[:, n:b] = self.pad.numpy()[:, None]
        tables = self.host_tables.numpy()
        for r, t in enumerate(step.block_tables):
            tables[r, :len(t)] = t  # entries past a row's context are never read
        tables[n:b, 0] = self.runner.scratch_block
        self.staged = step

    def replay(self, step: StepInput) -> torch.Tensor:
        """fp32 logits [len(step.logits_rows), vocab] of a decode-only step."""
        if self.staged is not step:
            self.stage(step)
        self.staged = None
        n = len(step.ctx_lens)
        b = next(s for s in self.buckets if s >= n)
        self.host_meta.numpy()[0, :n] = step.token_ids
        # The next stage() waits for these uploads (``copied``) before rewriting the buffers.
        self.meta.copy_(self.host_meta, non_blocking=True)
        self.tables[:b].copy_(self.host_tables[:b], non_blocking=True)
        self.copied.record()
        self.graphs[b].replay()
        rows = torch.as_tensor(np.asarray(step.logits_rows, dtype=np.int64)).to(
            self.logits.device, non_blocking=True)
        return self.logits.index_select(0, rows)
