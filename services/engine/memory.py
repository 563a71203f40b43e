"""KV cache sized from the device's free memory (DESIGN.md §6).

``SchedulerConfig.num_blocks=None`` (``kv_blocks: auto``) sizes the cache here: on CUDA by
the measured plan below, elsewhere (CPU: tests, the tiny model) to ``CPU_KV_BLOCKS``.

After the weights are loaded, one eager forward of the largest prefill step and one of the
largest decode step the scheduler may form are run on a throwaway cache; their peak
activation memory, the decode graphs' logits buffer and pool, and everything already on the
device (weights, CUDA context, other processes) are taken off ``utilization`` of the
device's memory, and the rest becomes KV blocks. The scheduler never forms a larger step than
the ones profiled, so the engine does not run out of memory at its largest admitted batch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from services.model.transformer import Emu35ForCausalLM

from .runner import ModelRunner, StepInput, kv_bytes_per_block
from .scheduler import SchedulerConfig

log = logging.getLogger(__name__)

# Auto-sized KV blocks off CUDA: no memory to measure, a fixed count: 65,536 tokens at the
# default block size of 16, 32 MiB on the tiny model (8 KiB a block), where a guided request
# at full context (2 x 9,216 tokens) takes 1,152 blocks.
CPU_KV_BLOCKS = 4096


@dataclass(frozen=True)
class KVPlan:
    num_blocks: int
    block_bytes: int
    activation_bytes: int     # peak of the profiled steps
    reserved_bytes: int       # decode graphs: logits buffer and pool
    device_used_bytes: int    # weights, context and anything else on the device
    total_bytes: int

    @property
    def kv_bytes(self) -> int:
        return self.num_blocks * self.block_bytes


def _profile_steps(sc: SchedulerConfig, logits_rows: int) -> list[StepInput]:
    """The largest prefill (one row of max_batched_tokens, logits for as many rows as a step
    may sample) and the largest decode step (max_num_seqs rows of one token each)."""
    t, bs = sc.max_batched_tokens, sc.block_size
    blocks = -(-t // bs)
    prefill = StepInput(
        token_ids=[0] * t, positions=list(range(t)), slots=list(range(t)), cu_q=[0, t],
        ctx_lens=[t], block_tables=[list(range(blocks))],
        logits_rows=list(range(t - min(logits_rows, t), t)))
    r = sc.max_num_seqs
    decode = StepInput(
        token_ids=[0] * r, positions=[0] * r, slots=[i * bs for i in range(r)],
        cu_q=list(range(r + 1)), ctx_lens=[1] * r, block_tables=[[i] for i in range(r)],
        logits_rows=list(range(r)))
    return [prefill, decode]


def _peak(runner: ModelRunner, step: StepInput, base: int) -> int:
    dev = runner.device
    torch.cuda.reset_peak_memory_stats(dev)
    runner.execute(step)
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev) - base


def plan_kv_cache(model: Emu35ForCausalLM, sc: SchedulerConfig, utilization: float,
                  attention: str | None = None) -> KVPlan:
    """How many KV blocks fit on ``model``'s CUDA device (see the module docstring)."""
    if not 0.0 < utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    if model.device.type != "cuda":
        raise ValueError("num_blocks: sizing the KV cache from free memory needs a CUDA "
                         "device; set num_blocks explicitly")
    dev = model.device
    steps = _profile_steps(sc, sc.max_num_seqs)
    blocks = max(-(-sc.max_batched_tokens // sc.block_size), sc.max_num_seqs)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    runner = ModelRunner(model, blocks, sc.block_size, attention)
    base = torch.cuda.memory_allocated(dev)
    prefill_peak, decode_peak = (_peak(runner, step, base) for step in steps)
    del runner
    torch.cuda.empty_cache()
    activation = max(prefill_peak, decode_peak)
    block_bytes = kv_bytes_per_block(model, sc.block_size)
    # Decode graphs hold a static logits buffer and a pool of about one decode step's peak.
    reserved = sc.max_num_seqs * model.config.vocab_size * 4 + decode_peak
    free, total = torch.cuda.mem_get_info(dev)
    plan = kv_plan(total, total - free, activation, reserved, block_bytes, utilization, blocks)
    log.info("KV cache: %d blocks (%.1f GiB); activations %.2f GiB; device used %.1f of %.1f GiB",
             plan.num_blocks, plan.kv_bytes / 2**30, activation / 2**30,
             plan.device_used_bytes / 2**30, total / 2**30)
    return plan


def kv_plan(total: int, used: int, activation: int, reserved: int, block_bytes: int,
            utilization: float, min_blocks: int) -> KVPlan:
    """The arithmetic of :func:`plan_kv_cache`: ``utilization`` of ``total`` bytes, less what
    is ``used`` (weights, context, other processes), the profiled ``activation`` peak and
    the graphs' ``reserved`` bytes, in blocks, less the scratch block. Raises RuntimeError
    when fewer than ``min_blocks`` fit (the largest step needs them)."""
    if not 0.0 < utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    left = int(total * utilization) - used - activation - reserved
    num_blocks = left // block_bytes - 1  # one scratch block rides along
    if num_blocks < min_blocks:
        raise RuntimeError(
            f"gpu_memory_utilization: {utilization} of {total / 2**30:.1f} GiB leaves room for "
            f"{max(num_blocks, 0)} KV blocks after weights ({used / 2**30:.1f} GiB in use) and "
            f"activations ({activation / 2**30:.2f} GiB); need at least {min_blocks}")
    return KVPlan(num_blocks, block_bytes, activation, reserved, used, total)
