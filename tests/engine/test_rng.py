"""The per-token uniforms: SplitMix64 test vectors, pinned values, range and spread."""
from __future__ import annotations

import math

import pytest

from services.engine.rng import GOLDEN_GAMMA, MASK64, mix64, token_uniform


def test_mixer_gives_splitmix64_outputs():
    # SplitMix64 seeded with 0: its first three outputs (the published sequence).
    outputs = [mix64(i * GOLDEN_GAMMA & MASK64) for i in (1, 2, 3)]
    assert outputs == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("seed,index,value", [
    (0, 0, 0.6524484863740322), (6666, 0, 0.04306697873784737),
    (6666, 1, 0.6644746287749457), (6666, 4999, 0.9087192300574536)])
def test_values_are_pinned(seed, index, value):
    """The convention is part of reproducibility: changing it changes every sampled output."""
    assert token_uniform(seed, index) == value


def test_seed_is_taken_modulo_2_64():
    assert token_uniform(-1, 5) == token_uniform(MASK64, 5)
    assert token_uniform(2 ** 64 + 64, 3) == token_uniform(64, 3)


def test_range_spread_and_independence_of_streams():
    a = [token_uniform(7, i) for i in range(20000)]
    b = [token_uniform(8, i) for i in range(20000)]
    assert all(0.0 <= x < 1.0 for x in a + b)
    assert abs(sum(a) / len(a) - 0.5) < 0.01
    assert abs(sum((x - 0.5) ** 2 for x in a) / len(a) - 1 / 12) < 0.005
    n = len(a)
    corr = sum((x - 0.5) * (y - 0.5) for x, y in zip(a, b)) / n * 12
    assert abs(corr) < 4 / math.sqrt(n)  # neighbouring seeds are uncorrelated
    lag = sum((x - 0.5) * (y - 0.5) for x, y in zip(a, a[1:])) / n * 12
    assert abs(lag) < 4 / math.sqrt(n)
    assert len(set(a)) == n
