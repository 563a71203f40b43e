"""KV cache sizing (kv_blocks: auto): the measured planner's arithmetic with injected memory
figures (the measuring itself runs on CUDA, tests/engine/test_cuda_graphs.py), and the fixed
default off CUDA."""
from __future__ import annotations

import pytest

from services.engine.memory import CPU_KV_BLOCKS, kv_plan

GiB = 2**30


def test_blocks_are_what_utilization_leaves_after_weights_activations_and_graphs():
    plan = kv_plan(total=140 * GiB, used=70 * GiB, activation=4 * GiB, reserved=1 * GiB,
                   block_bytes=4 * 2**20, utilization=0.9, min_blocks=128)
    left = int(140 * GiB * 0.9) - 75 * GiB
    assert plan.num_blocks == left // (4 * 2**20) - 1  # less the scratch block
    assert plan.kv_bytes <= left and (plan.device_used_bytes, plan.total_bytes) == (70 * GiB, 140 * GiB)


def test_too_little_memory_names_the_setting():
    with pytest.raises(RuntimeError, match=r"gpu_memory_utilization: 0.5 of 80.0 GiB leaves "
                                           r"room for 0 KV blocks.*need at least 128"):
        kv_plan(total=80 * GiB, used=60 * GiB, activation=GiB, reserved=0,
                block_bytes=2**20, utilization=0.5, min_blocks=128)


@pytest.mark.parametrize("bad", [0.0, 1.01, -1])
def test_utilization_out_of_range(bad):
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        kv_plan(80 * GiB, 0, 0, 0, 2**20, bad, 1)


def test_cpu_default_is_documented_and_fixed():
    assert CPU_KV_BLOCKS == 4096
