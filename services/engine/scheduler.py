"""Continuous batching over guidance groups: each step packs one decode token for every
running stream that has one, continues chunked prefills, and admits waiting groups while the
token budget, row limit and KV blocks allow. When blocks run out, the newest running group is
preempted (its blocks freed, recomputed on readmission); a group always moves as a unit.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_pool import BlockPool, OutOfBlocks
from .sequence import GuidanceGroup, KVBlocks, Role, Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64            # rows (streams) computed per step
    max_batched_tokens: int = 2048    # tokens per step (prefill chunks + decode)
    max_waiting: int = 256            # bounded queue: beyond it requests are refused
    # A request the engine could not start within this (estimated from its KV blocks, rows
    # and the work ahead, admission.py) is refused at once with a retry hint; None: never
    # (offline batches queue everything).
    max_queue_delay_s: float | None = 30.0
    block_size: int = 16
    # KV cache blocks; None (kv_blocks: auto): measured on CUDA, memory.CPU_KV_BLOCKS else
    num_blocks: int | None = None


@dataclass
class Chunk:
    """Tokens seq.tokens[start:start+length] are computed this step."""

    group: GuidanceGroup
    seq: Sequence
    start: int
    length: int
    need_logits: bool = False


@dataclass
class StepPlan:
    chunks: list[Chunk] = field(default_factory=list)
    sampling: list[GuidanceGroup] = field(default_factory=list)  # groups that sample after
    preempted: list[GuidanceGroup] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.length for c in self.chunks)


@dataclass(frozen=True)
class EngineLoad:
    """A snapshot of the scheduler's load (what Health/Info report, summed over replicas)."""

    waiting: int          # groups queued, not admitted yet
    running: int          # groups admitted (generating)
    kv_blocks_used: int   # blocks held by running groups (cached free blocks do not count)
    kv_blocks_total: int
    max_waiting: int      # the queue bound: beyond it add() raises QueueFull


class QueueFull(RuntimeError):
    """The engine cannot take the request soon (queue bound, or no capacity within the
    queue delay limit). ``retry_after_s``: estimated seconds until a retry may succeed."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.pool = BlockPool(config.num_blocks, config.block_size)
        self.kv = KVBlocks(self.pool)
        self.waiting: deque[GuidanceGroup] = deque()
        self.running: list[GuidanceGroup] = []

    def add(self, group: GuidanceGroup) -> None:
        if len(self.waiting) >= self.config.max_waiting:
            raise QueueFull(f"waiting queue full ({self.config.max_waiting} requests)")
        self.waiting.append(group)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def load(self) -> EngineLoad:
        return EngineLoad(len(self.waiting), len(self.running), self.pool.num_used,
                          self.pool.num_blocks, self.config.max_waiting)

    def free(self, group: GuidanceGroup) -> None:
        """Release every block of the group now (finish, abort, preemption)."""
        for seq in group.seqs.values():
            self.kv.free(seq)
        if group in self.running:
            self.running.remove(group)
        elif group in self.waiting:
            self.waiting.remove(group)

    def schedule(self, needs_logits) -> StepPlan:
        """needs_logits(group, role) -> bool: whether a guide stream's logits are used next."""
        plan = StepPlan()
        budget = [self.config.max_batched_tokens, self.config.max_num_seqs]
        for group in list(self.running):
            if group.status is Status.RUNNING:
                self._schedule_group(group, plan, budget, needs_logits, admit=False)
        while self.waiting and budget[0] > 0 and budget[1] >= len(self.waiting[0].seqs):
            group = self.waiting[0]
            if not self._can_admit(group):
                break
            self.waiting.popleft()
            group.status = Status.RUNNING
            self.running.append(group)
            self._schedule_group(group, plan, budget, needs_logits, admit=True)
        return plan

    def _can_admit(self, group: GuidanceGroup) -> bool:
        # Whole prompts must fit with one spare block per stream, so admitted work can always
        # make progress without immediately preempting others.
        need = sum(-(-len(s.tokens) // self.pool.block_size) + 1 for s in group.seqs.values())
        return need <= self.pool.num_free

    def _schedule_group(self, group, plan: StepPlan, budget, needs_logits, admit: bool) -> None:
        """Schedule the group's pending tokens. The conditional stream's last token is held
        back until a step in which every guide stream finishes too, so the group samples with
        all the logits it needs from one forward."""
        if admit:
            for seq in group.seqs.values():
                group.cached_prompt_tokens += self.kv.reuse_prefix(seq)
        if budget[1] < sum(1 for s in group.seqs.values() if s.pending):
            return  # no room for all its rows this step
        chunks, guides_done = [], True
        for role, seq in group.seqs.items():
            if role is Role.COND:
                continue
            n = min(seq.pending, budget[0])
            guides_done &= n == seq.pending
            if n and not self._add_chunk(group, seq, n, chunks, plan, budget):
                return
        cond = group.cond
        n = min(cond.pending, budget[0])
        if not guides_done:
            n = min(n, cond.pending - 1)
        sampling = guides_done and n == cond.pending and n > 0
        if n > 0 and not self._add_chunk(group, cond, n, chunks, plan, budget):
            return
        if sampling:
            for c in chunks:
                c.need_logits = c.seq.role is Role.COND or needs_logits(group, c.seq.role)
            plan.sampling.append(group)
        plan.chunks.extend(chunks)

    def _add_chunk(self, group, seq, n, chunks, plan, budget) -> bool:
        if not self._reserve(seq, n, group, plan):
            return False  # the group itself was preempted
        budget[0] -= n
        budget[1] -= 1
        chunks.append(Chunk(group, seq, seq.num_computed, n))
        return True

    def _reserve(self, seq: Sequence, n: int, group: GuidanceGroup, plan: StepPlan) -> bool:
        while True:
            try:
                self.kv.reserve(seq, n)
                return True
            except OutOfBlocks:
                victim = self.running[-1]
                self._preempt(victim, plan)
                if victim is group:
                    return False

    def _preempt(self, group: GuidanceGroup, plan: StepPlan) -> None:
        plan.chunks = [c for c in plan.chunks if c.group is not group]
        if group in plan.sampling:
            plan.sampling.remove(group)
        self.free(group)
        group.status = Status.WAITING
        group.num_preemptions += 1
        self.waiting.appendleft(group)
        plan.preempted.append(group)
