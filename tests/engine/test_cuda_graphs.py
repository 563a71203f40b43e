"""Decode CUDA graphs and KV sizing from free memory.

The bucket rule runs anywhere; the rest needs a CUDA device (pytest -m gpu on the device):
graph replay must give the eager path's logits for the same steps, padding rows must never
touch a real block, and an auto-sized cache must run the scheduler's largest batch."""
from __future__ import annotations

import pytest
import torch

from services.engine.cuda_graphs import bucket_sizes
from services.engine.engine import Engine, EngineConfig
from services.engine.request import SamplingParams, default_request
from services.engine.scheduler import SchedulerConfig
from services.model.loader import load_checkpoint
from services.model.prompting import prepare_prompt
from tests.engine.test_engine_gpu import MID, _checkpoint

gpu = pytest.mark.gpu


def test_bucket_sizes_cover_every_batch():
    for max_rows in (1, 2, 3, 7, 8, 9, 64, 100):
        sizes = bucket_sizes(max_rows)
        assert sizes == sorted(set(sizes)) and sizes[-1] == max_rows
        for n in range(1, max_rows + 1):  # every batch has a bucket at most 8 rows larger
            b = next(s for s in sizes if s >= n)
            assert b - n < 8
    assert bucket_sizes(64)[:5] == [1, 2, 4, 8, 16]


def _run(path, graphs: bool, requests: int = 5, rows: int = 16):
    """Greedy requests through the engine; returns every step's logits and each output."""
    model, tok = load_checkpoint(path, device="cuda")
    sc = SchedulerConfig(num_blocks=512, block_size=16, max_num_seqs=rows)
    eng = Engine(model, tok, EngineConfig(sc, "triton", cuda_graphs=graphs))
    assert (eng.runner.graphs is not None) == graphs
    for i in range(requests):
        p = prepare_prompt(tok, "t2i", f"request {i}: a boat", size="3*4")
        eng.add_request(default_request(f"r{i}", "t2i", p.cond, p.uncond, output_grid=p.output_grid,
                                        max_new_tokens=40, seed=i, text=SamplingParams(top_k=1),
                                        image=SamplingParams(top_k=1)))
    logits, replays = [], [0]
    execute = eng.runner.execute
    if graphs:
        replay = eng.runner.graphs.replay

        def counted(step):
            replays[0] += 1
            return replay(step)
        eng.runner.graphs.replay = counted

    def traced(step):
        out = execute(step)
        logits.append(out.cpu())
        return out
    eng.runner.execute = traced
    outputs = {}
    while eng.has_work():
        for ev in eng.step():
            if type(ev).__name__ == "Finished":
                outputs[ev.request_id] = ev.token_ids
    return logits, outputs, replays[0], eng


@gpu
@pytest.mark.parametrize("dims", [{}, MID], ids=["tiny", "mid"])
def test_graph_replay_matches_eager(tmp_path, dims):
    path = _checkpoint(tmp_path, **dims)
    eager_logits, eager_out, _, _ = _run(path, graphs=False)
    graph_logits, graph_out, replays, eng = _run(path, graphs=True)
    assert replays > 20, "decode steps did not replay graphs"
    assert graph_out == eager_out
    assert len(graph_logits) == len(eager_logits)
    worst = max(((g - e).abs().max() / e.abs().max()).item()
                for g, e in zip(graph_logits, eager_logits))
    assert worst < 1e-2, worst
    # Padding rows wrote only to the scratch block: every real block is free again.
    assert eng.scheduler.pool.num_free == eng.scheduler.pool.num_blocks
    print(f"graph replays {replays}; worst relative logit difference {worst:.2e}")


@gpu
def test_auto_sized_cache_runs_the_largest_batch(tmp_path):
    path = _checkpoint(tmp_path, **MID)
    model, tok = load_checkpoint(path, device="cuda")
    sc = SchedulerConfig(num_blocks=None, max_num_seqs=32, max_batched_tokens=1024)
    util = 0.5
    eng = Engine(model, tok, EngineConfig(sc, "triton", gpu_memory_utilization=util))
    plan = eng.kv_plan
    free, total = torch.cuda.mem_get_info()
    assert plan.num_blocks == eng.scheduler.pool.num_blocks > 1000
    assert total - free <= util * total * 1.02, "the engine took more than it was given"
    # 16 guided requests = 32 rows: the scheduler's largest decode batch, plus full prefills.
    for i in range(16):
        p = prepare_prompt(tok, "t2i", f"request {i} " + "word " * 100, size="4*4")
        eng.add_request(default_request(f"r{i}", "t2i", p.cond, p.uncond, output_grid=p.output_grid,
                                        max_new_tokens=80, seed=i))
    finished, widest = 0, 0
    while eng.has_work():
        widest = max(widest, len(eng.scheduler.running))
        finished += sum(type(ev).__name__ == "Finished" for ev in eng.step())
    assert finished == 16 and widest == 16
    print(f"KV blocks {plan.num_blocks} ({plan.kv_bytes / 2**30:.1f} GiB), activations "
          f"{plan.activation_bytes / 2**20:.0f} MiB")


def test_auto_sizing_off_cuda_takes_the_fixed_default(tmp_path):
    from services.engine.memory import CPU_KV_BLOCKS

    path = _checkpoint(tmp_path)
    model, tok = load_checkpoint(path, device="cpu")
    assert SchedulerConfig().num_blocks is None  # kv_blocks: auto is the default
    engine = Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=None)))
    assert engine.scheduler.pool.num_blocks == CPU_KV_BLOCKS and engine.kv_plan is None


def test_utilization_out_of_range_names_the_field(tmp_path):
    path = _checkpoint(tmp_path)
    model, tok = load_checkpoint(path, device="cpu")
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="gpu_memory_utilization"):
            Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=None),
                                            gpu_memory_utilization=bad))
