"""Per-request randomness: one uniform per sampled token, from (seed, output index) alone.

A counter-based generator (SplitMix64's mixer, pure Python ints) replaces stateful device
generators: token ``i`` of a request's output draws ``token_uniform(seed, i)``, whatever else
shares the batch, whenever the step runs (preemption, recompute) and on any device. Forced
tokens and greedy rows simply do not use their uniform, so nothing needs to be "consumed".
"""
from __future__ import annotations

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (2^64 / golden ratio, odd)


def mix64(z: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit ints with full avalanche."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def token_uniform(seed: int, index: int) -> float:
    """The uniform in [0, 1) that token ``index`` (0-based, in the request's output) draws.

    The seed is taken modulo 2^64 and mixed into a stream key; the value is output
    ``index + 1`` of SplitMix64 started at that key, its top 53 bits as a double.
    """
    key = mix64((seed + GOLDEN_GAMMA) & MASK64)
    z = mix64((key + (index + 1) * GOLDEN_GAMMA) & MASK64)
    return (z >> 11) * 2.0 ** -53
