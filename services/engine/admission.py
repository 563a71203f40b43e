"""Admission: whether the engine can take a request soon, judged by its real capacity.

Every request in the engine is counted at its expected footprint: KV blocks for its prompt
plus the output it is expected to write (an image task: its image and a few tokens after;
anything else: its whole budget), in each of its streams, and one row per stream. A new
request whose footprint fits beside everything running and waiting is admitted at once, so a
burst the engine has room for is taken whole. Otherwise it would wait for running requests to
finish: the estimate is the steps until enough of them (soonest first, then the queue ahead)
have finished to free its blocks and rows, times the recent step time. A request whose
estimated wait exceeds ``max_queue_delay_s`` is refused at once with :class:`QueueFull`
carrying ``retry_after_s``, the estimated seconds until that wait is acceptable again.
``max_waiting`` stays a hard bound on the queue.
"""
from __future__ import annotations

from .request import IMAGE_TASKS
from .scheduler import QueueFull, Scheduler
from .sequence import GuidanceGroup

# After its image, a t2i/x2i answer normally ends at once (ESS EOS): this many tokens.
IMAGE_TAIL_TOKENS = 8
# Step time assumed until the engine has measured one (a conservative decode step).
DEFAULT_STEP_S = 0.05
# Weight of the newest step in the step-time average.
STEP_EMA = 0.1
MIN_RETRY_S = 1.0


def expected_output(group: GuidanceGroup) -> int:
    """Output tokens the request is still expected to write (at least one)."""
    req, written = group.request, len(group.output)
    left = req.max_new_tokens - written
    grid = group.grammar.fixed_grid
    if req.task in IMAGE_TASKS and grid is not None:
        left = min(left, max(grid.span_length + IMAGE_TAIL_TOKENS - written, IMAGE_TAIL_TOKENS))
    return max(left, 1)


def footprint(group: GuidanceGroup, block_size: int) -> int:
    """KV blocks the request is expected to hold at its end, over all its streams."""
    more = expected_output(group)
    return sum(-(-(len(seq.tokens) + more) // block_size) for seq in group.seqs.values())


class Admission:
    """Judges new requests against the scheduler's load; fed the engine's step times."""

    def __init__(self, max_queue_delay_s: float | None):
        self.max_queue_delay_s = max_queue_delay_s
        self.step_s: float | None = None  # moving average of busy steps

    def record_step(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else \
            (1 - STEP_EMA) * self.step_s + STEP_EMA * seconds

    def check(self, scheduler: Scheduler, group: GuidanceGroup) -> None:
        """Return if ``group`` can start within ``max_queue_delay_s``; else raise QueueFull."""
        cfg = scheduler.config
        if len(scheduler.waiting) >= cfg.max_waiting:
            raise QueueFull(f"waiting queue full ({cfg.max_waiting} requests)",
                            max(self.wait_s(scheduler, group), MIN_RETRY_S))
        if self.max_queue_delay_s is None:
            return
        wait_s = self.wait_s(scheduler, group)
        if wait_s > self.max_queue_delay_s:
            pool = scheduler.pool
            raise QueueFull(
                f"engine busy: a new request would wait about {wait_s:.0f} s (limit "
                f"{self.max_queue_delay_s:.0f} s; {len(scheduler.running)} running, "
                f"{len(scheduler.waiting)} waiting, {pool.num_used} of {pool.num_blocks} KV "
                f"blocks in use)", max(wait_s - self.max_queue_delay_s, MIN_RETRY_S))

    def wait_s(self, scheduler: Scheduler, group: GuidanceGroup) -> float:
        """Estimated seconds before ``group`` could be admitted (0: room now)."""
        return self.steps_until_room(scheduler, group) * (self.step_s or DEFAULT_STEP_S)

    @staticmethod
    def steps_until_room(scheduler: Scheduler, group: GuidanceGroup) -> int:
        bs, cfg = scheduler.pool.block_size, scheduler.config
        ahead = scheduler.running + list(scheduler.waiting)
        short_blocks = (sum(footprint(g, bs) for g in ahead) + footprint(group, bs)
                        - scheduler.pool.num_blocks)
        short_rows = sum(len(g.seqs) for g in ahead) + len(group.seqs) - cfg.max_num_seqs
        if short_blocks <= 0 and short_rows <= 0:
            return 0
        # Running requests advance together, one token a step: the soonest done free first.
        # The queue ahead runs after them, in order (a rough bound: it may start sooner).
        order = [(0, g) for g in sorted(scheduler.running, key=expected_output)]
        after = expected_output(order[-1][1]) if order else 0
        order += [(after, g) for g in scheduler.waiting]
        steps = 0
        for base, g in order:
            steps = base + expected_output(g)
            short_blocks -= footprint(g, bs)
            short_rows -= len(g.seqs)
            if short_blocks <= 0 and short_rows <= 0:
                break
        return steps  # when even an empty engine lacks room, add_request refuses it anyway
