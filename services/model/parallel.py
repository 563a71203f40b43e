"""Tensor-parallel building blocks (Megatron style), usable at world size 1.

Each layer owns its rank's slice of a logical weight and knows how to cut that slice from a
full checkpoint tensor (``load_shard``), so the loader streams full tensors and every rank keeps
only its part. Communication goes through :class:`ParallelGroup`; at world size 1 it is a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear import SplitKPartials, linear


@dataclass(frozen=True)
class ParallelGroup:
    """This process's place in a tensor-parallel group."""

    rank: int = 0
    world_size: int = 1
    group: object | None = None  # a torch.distributed ProcessGroup when world_size > 1

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"tensor-parallel rank {self.rank} outside world size {self.world_size}")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate each rank's x along the last dimension."""
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def split(self, size: int, what: str) -> int:
        if size % self.world_size:
            raise ValueError(f"{what}={size} is not divisible by tensor-parallel size {self.world_size}")
        return size // self.world_size


class ColumnParallelLinear(nn.Module):
    """y = x W^T with W's output rows split across ranks; several logical weights may be
    stacked in one matrix (fused QKV or gate/up) so one GEMM streams them all."""

    skinny = True  # may take the skinny GEMM (Emu35ForCausalLM.use_kernels sets it)

    def __init__(self, in_features: int, out_sizes: dict[str, int], pg: ParallelGroup,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.in_features = in_features
        self.full_sizes = dict(out_sizes)
        self.local_sizes = {k: pg.split(v, f"{k} output size") for k, v in out_sizes.items()}
        self.offsets, offset = {}, 0
        for name, size in self.local_sizes.items():
            self.offsets[name] = offset
            offset += size
        self.pg = pg
        self.weight = nn.Parameter(torch.empty(offset, in_features, dtype=dtype, device=device),
                                   requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, skinny=self.skinny)

    def load_shard(self, name: str, full: torch.Tensor) -> None:
        """Copy this rank's rows of logical weight ``name`` ([full_out, in]) into place."""
        size = self.local_sizes[name]
        rows = full.narrow(0, self.pg.rank * size, size)
        self.weight.data.narrow(0, self.offsets[name], size).copy_(rows)


class RowParallelLinear(nn.Module):
    """y = x W^T with W's input columns split across ranks, partial sums all-reduced."""

    skinny = True  # may take the skinny GEMM (Emu35ForCausalLM.use_kernels sets it)

    def __init__(self, in_features: int, out_features: int, pg: ParallelGroup,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.local_in = pg.split(in_features, "row-parallel input size")
        self.pg = pg
        self.weight = nn.Parameter(torch.empty(out_features, self.local_in, dtype=dtype, device=device),
                                   requires_grad=False)

    def forward(self, x: torch.Tensor, defer_split_sum: bool = False
                ) -> torch.Tensor | SplitKPartials:
        """With ``defer_split_sum`` (world size 1 only: the all-reduce needs the sum) a
        split-K skinny GEMM returns its partials for the consumer to add up."""
        y = linear(x, self.weight, defer_split_sum=defer_split_sum and self.pg.world_size == 1,
                   skinny=self.skinny)
        return y if isinstance(y, SplitKPartials) else self.pg.all_reduce(y)

    def load_shard(self, name: str, full: torch.Tensor) -> None:
        cols = full.narrow(1, self.pg.rank * self.local_in, self.local_in)
        self.weight.data.copy_(cols)


class VocabParallelEmbedding(nn.Module):
    """Embedding table with vocabulary rows split across ranks."""

    row_multiple = 1

    def __init__(self, vocab_size: int, dim: int, pg: ParallelGroup,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.vocab_size = vocab_size
        # Pad so every rank holds the same number of rows; padded rows are never looked up.
        rows, mult = -(-vocab_size // pg.world_size), self.row_multiple
        self.local_rows = -(-rows // mult) * mult
        self.start = pg.rank * self.local_rows
        self.pg = pg
        self.weight = nn.Parameter(torch.empty(self.local_rows, dim, dtype=dtype, device=device),
                                   requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pg.world_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.local_rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return self.pg.all_reduce(out)

    def load_shard(self, name: str, full: torch.Tensor) -> None:
        rows = full[self.start:self.start + self.local_rows]
        self.weight.data[: rows.shape[0]].copy_(rows)
        self.weight.data[rows.shape[0]:].zero_()


class ParallelLMHead(VocabParallelEmbedding):
    """Untied output projection, vocabulary split across ranks; logits gathered and cut to
    the true vocabulary size."""

    # Zero rows pad each shard to a multiple of 64 so the logits' row stride stays 16-byte
    # aligned: GEMM kernels for 282,926 columns otherwise fall back to slow paths.
    row_multiple = 64
    skinny = True  # may take the skinny GEMM (Emu35ForCausalLM.use_kernels sets it)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: [N, hidden] -> [N, vocab]
        logits = self.pg.all_gather_last(linear(h, self.weight, skinny=self.skinny))
        return logits[..., : self.vocab_size]


class ReplicatedParameter(nn.Module):
    """A small weight (norms) every rank holds whole."""

    def __init__(self, size: int, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype, device=device), requires_grad=False)

    def load_shard(self, name: str, full: torch.Tensor) -> None:
        self.weight.data.copy_(full)
