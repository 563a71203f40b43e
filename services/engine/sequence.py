"""Sequences (one token stream with its KV blocks) and guidance groups (a request's
conditional and unconditional streams, admitted, scheduled, preempted and freed as a unit)."""
from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

from .block_pool import BlockPool, block_hash
from .grammar import GrammarState
from .request import GenerationRequest

_ids = itertools.count()


class Role(str, enum.Enum):
    COND = "cond"
    UNCOND = "uncond"            # negative prompt + image spans only (no_text)
    FULL_UNCOND = "full_uncond"  # 3-way guidance: its prompt + the current image span


class Sequence:
    """Tokens of one stream; tokens[:num_computed] have KV in the blocks of block_table.
    Positions count from 0 in every stream (spec §6.3 item 5)."""

    def __init__(self, role: Role, prompt: tuple[int, ...]):
        self.seq_id = next(_ids)
        self.role = role
        self.prompt_len = len(prompt)
        self.tokens: list[int] = list(prompt)
        self.num_computed = 0
        self.block_table: list[int] = []
        self.num_published = 0          # leading full blocks registered for prefix reuse
        self.last_hash: bytes | None = None

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.num_computed


class KVBlocks:
    """Block-table operations of sequences over a shared :class:`BlockPool`."""

    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.bs = pool.block_size

    def reuse_prefix(self, seq: Sequence) -> int:
        """Take cached blocks for the sequence's leading full blocks; at least one token is
        left to compute so the step yields logits. Returns tokens reused."""
        assert seq.num_computed == 0 and not seq.block_table
        for i in range((len(seq.tokens) - 1) // self.bs):
            h = block_hash(seq.last_hash, seq.tokens[i * self.bs:(i + 1) * self.bs])
            block = self.pool.lookup(h)
            if block is None:
                break
            seq.block_table.append(block)
            seq.last_hash, seq.num_published = h, i + 1
            seq.num_computed += self.bs
        return seq.num_computed

    def blocks_needed(self, seq: Sequence, n: int) -> int:
        return max(0, -(-(seq.num_computed + n) // self.bs) - len(seq.block_table))

    def reserve(self, seq: Sequence, n: int) -> None:
        """Make room for the next n tokens (raises OutOfBlocks, leaving partial grants)."""
        for _ in range(self.blocks_needed(seq, n)):
            seq.block_table.append(self.pool.allocate())

    def commit(self, seq: Sequence, n: int) -> None:
        """n more tokens now have KV; publish blocks that just became full."""
        seq.num_computed += n
        while (seq.num_published + 1) * self.bs <= seq.num_computed:
            i = seq.num_published
            seq.last_hash = block_hash(seq.last_hash, seq.tokens[i * self.bs:(i + 1) * self.bs])
            self.pool.publish(seq.block_table[i], seq.last_hash)
            seq.num_published += 1

    def free(self, seq: Sequence) -> None:
        self.pool.release(seq.block_table)
        seq.block_table, seq.num_computed = [], 0
        seq.num_published, seq.last_hash = 0, None

    def truncate(self, seq: Sequence, length: int) -> None:
        """Cut the stream back to ``length`` tokens; KV is kept for whole published blocks
        only, so no block another sequence may share is ever written again."""
        keep = min(length // self.bs, seq.num_published)
        self.pool.release(seq.block_table[keep:])
        del seq.block_table[keep:]
        del seq.tokens[length:]
        seq.num_computed = keep * self.bs
        if seq.num_published > keep:
            seq.num_published = keep
            seq.last_hash = self._chain_hash(seq, keep)

    def _chain_hash(self, seq: Sequence, n_blocks: int) -> bytes | None:
        h = None
        for i in range(n_blocks):
            h = block_hash(h, seq.tokens[i * self.bs:(i + 1) * self.bs])
        return h


class Status(str, enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class GuidanceGroup:
    """One request in flight: its streams, grammar state, output and timings."""

    request: GenerationRequest
    grammar: GrammarState
    seqs: dict[Role, Sequence]
    status: Status = Status.WAITING
    output: list[int] = field(default_factory=list)
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    num_preemptions: int = 0
    cached_prompt_tokens: int = 0

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def cond(self) -> Sequence:
        return self.seqs[Role.COND]

    def guide_streams(self) -> list[Sequence]:
        """Streams that follow the image span (advance only in image mode)."""
        return [s for r, s in self.seqs.items() if r is not Role.COND]
