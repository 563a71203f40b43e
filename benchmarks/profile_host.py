"""Host time of one engine step, on CPU, with the forward replaced by random logits: where
the Python of a step goes, and how much of it the GPU would wait for.

    python -m benchmarks.profile_host [--requests 1 32] [--steps 300] [--size 64*64] [--cprofile]

The tiny random model builds the engine (nothing is downloaded); ``runner.execute`` is swapped
for a fake that returns fp32 logits of the right shape at once (a seam for this measurement
only). Requests are t2i images with text sampling limited to BOI (``force_images``), measured
once every group is inside its image: the steady state of image generation.

"critical" is the GPU-idle host time per step: from the host reading step N's tokens to the
launch of step N+1's forward. Everything else of a step overlaps the forward on a GPU.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections import defaultdict

import torch

import services.engine.engine as engine_mod
import services.engine.sampler as sampler_mod
from services.engine.engine import Engine, EngineConfig
from services.engine.scheduler import SchedulerConfig
from services.model.loader import load_checkpoint
from services.model.tiny import write_tiny_checkpoint

from .bench_engine import force_images, t2i_request


class Clock:
    """Per-step sums of wrapped calls, plus the read-tokens -> next-launch gap."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.last_read: float | None = None
        self.gaps: list[float] = []
        self.on = False

    def wrap(self, owner, name: str, label: str | None = None) -> None:
        if not hasattr(owner, name):
            return
        fn, label = getattr(owner, name), label or name

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.on:
                    self.sums[label] += time.perf_counter() - t
        setattr(owner, name, timed)

    def reset(self) -> None:
        self.sums.clear()
        self.gaps.clear()
        self.last_read, self.on = None, False

    def tokens_read(self) -> None:
        self.last_read = time.perf_counter()

    def launched(self) -> None:
        if self.on and self.last_read is not None:
            self.gaps.append(time.perf_counter() - self.last_read)
        self.last_read = None


def fake_execute(clock: Clock, vocab: int):
    gen = torch.Generator().manual_seed(0)

    def execute(step):
        clock.launched()
        return torch.randn(len(step.logits_rows), vocab, generator=gen)
    return execute


def hook_token_read(clock: Clock) -> None:
    """Mark the moment the host has step N's tokens (the device sync)."""
    if hasattr(sampler_mod, "PendingTokens"):
        owner, name = sampler_mod.PendingTokens, "read"
    else:
        owner, name = engine_mod, "sample"
    fn = getattr(owner, name)

    def read(*args, **kwargs):
        out = fn(*args, **kwargs)
        clock.tokens_read()
        return out
    setattr(owner, name, read)


def build(model, tok, clock: Clock) -> Engine:
    sc = SchedulerConfig(num_blocks=40000, max_num_seqs=64, max_batched_tokens=4096,
                         max_waiting=1024)
    eng = Engine(model, tok, EngineConfig(sc, cuda_graphs=False))
    force_images(eng)
    eng.runner.execute = fake_execute(clock, tok.vocab_size)
    clock.wrap(eng.scheduler, "schedule")
    for name in ("_sampling_batch", "_append", "_settle", "_emit", "_launch_sampling"):
        clock.wrap(eng, name)
    return eng


def hook_modules(clock: Clock) -> None:
    """Module-level seams, wrapped once per process."""
    hook_token_read(clock)
    clock.wrap(engine_mod, "build_step_input")
    clock.wrap(engine_mod, "sample")
    clock.wrap(engine_mod, "draw_tokens", "sample_launch")


def profile(model, tok, clock: Clock, n_requests: int, steps: int, size: str,
            use_cprofile: bool) -> dict:
    clock.reset()
    eng = build(model, tok, clock)
    for i in range(n_requests):
        eng.add_request(t2i_request(tok, f"p{i}", seed=100 + i, size=size))
    while not all(g.grammar.k > 1 for g in eng.groups.values()) or len(eng.groups) < n_requests:
        eng.step()  # prefill, BOI, header: until every group is inside its image
    clock.on = True
    prof = cProfile.Profile() if use_cprofile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    for _ in range(steps):
        eng.step()
    if prof:
        prof.disable()
    total = time.perf_counter() - t0
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    ms = {k: v / steps * 1e3 for k, v in sorted(clock.sums.items())}
    gaps = sorted(clock.gaps)
    return dict(requests=n_requests, step_ms=total / steps * 1e3, **ms,
                critical_ms=sum(gaps) / len(gaps) * 1e3, critical_p50_ms=gaps[len(gaps) // 2] * 1e3)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--size", default="64*64")
    ap.add_argument("--cprofile", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        llm, _ = write_tiny_checkpoint(d, seed=5)
        model, tok = load_checkpoint(llm)
    clock = Clock()
    hook_modules(clock)
    for n in args.requests:
        res = profile(model, tok, clock, n, args.steps, args.size, args.cprofile)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in res.items()))


if __name__ == "__main__":
    main()
