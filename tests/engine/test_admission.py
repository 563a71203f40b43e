"""Backpressure that follows capacity: a burst the KV cache and rows can hold is admitted
whole; a request that would wait longer than max_queue_delay_s for blocks is refused at
once with QueueFull and a retry hint estimated from the work ahead and the step time;
max_waiting stays a hard bound. The step time is injected: no timing is asserted."""
from __future__ import annotations

import asyncio

import pytest

from services.engine.admission import IMAGE_TAIL_TOKENS, expected_output, footprint
from services.engine.async_engine import AsyncEngine
from services.engine.engine import Engine, EngineConfig
from services.engine.request import Guidance, GuidanceMode, default_request
from services.engine.scheduler import QueueFull, SchedulerConfig
from services.model.image_tokens import ImageGrid
from services.model.loader import load_checkpoint
from services.model.prompting import prepare_prompt
from services.model.tiny import write_tiny_checkpoint

BS = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    llm, _ = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=6)
    return load_checkpoint(llm)


def _engine(tiny, step_s=1.0, **sched) -> Engine:
    model, tok = tiny
    cfg = dict(num_blocks=64, block_size=BS, max_num_seqs=16, max_queue_delay_s=5.0)
    engine = Engine(model, tok, EngineConfig(SchedulerConfig(**{**cfg, **sched})))
    engine.admission.step_s = step_s  # as if measured
    return engine


def _unguided(tok, rid, budget):
    """A story request of 16 prompt tokens, one stream (no guidance)."""
    p = prepare_prompt(tok, "story", "x")
    return default_request(rid, "story", (p.cond * 2)[:16], (), max_new_tokens=budget,
                           guidance=Guidance(GuidanceMode.NONE))


def test_a_burst_that_fits_is_admitted_whole(tiny):
    _, tok = tiny
    engine = _engine(tiny, max_waiting=256)
    # each: 16 prompt + 240 output = 256 tokens = 16 blocks; 4 of them fill the 64 blocks
    for i in range(4):
        engine.add_request(_unguided(tok, f"r{i}", 240))
    assert len(engine.scheduler.waiting) == 4


def test_a_request_that_would_wait_too_long_is_refused_with_a_retry_hint(tiny):
    _, tok = tiny
    engine = _engine(tiny, step_s=1.0)
    for i in range(4):
        engine.add_request(_unguided(tok, f"r{i}", 240))
    with pytest.raises(QueueFull, match="engine busy: a new request would wait about 240 s") as e:
        engine.add_request(_unguided(tok, "late", 240))
    # room comes when the first of the four is done: 240 steps of 1 s; the limit is 5 s
    assert e.value.retry_after_s == pytest.approx(240 - 5.0)
    assert "late" not in engine.groups


def test_a_short_wait_is_queued(tiny):
    _, tok = tiny
    engine = _engine(tiny, step_s=0.01)   # 240 steps take about 2.4 s, under the 5 s limit
    for i in range(5):
        engine.add_request(_unguided(tok, f"r{i}", 240))
    assert len(engine.scheduler.waiting) == 5


def test_rows_count_too(tiny):
    _, tok = tiny
    engine = _engine(tiny, step_s=1.0, num_blocks=4096, max_num_seqs=2)
    engine.add_request(_unguided(tok, "a", 50))
    engine.add_request(_unguided(tok, "b", 60))
    with pytest.raises(QueueFull) as e:
        engine.add_request(_unguided(tok, "c", 50))
    assert e.value.retry_after_s == pytest.approx(50 - 5.0)  # "a" frees its row first


def test_max_waiting_stays_a_hard_bound(tiny):
    _, tok = tiny
    engine = _engine(tiny, max_waiting=2, num_blocks=4096)
    engine.add_request(_unguided(tok, "a", 10))
    engine.add_request(_unguided(tok, "b", 10))
    with pytest.raises(QueueFull, match=r"waiting queue full \(2 requests\)") as e:
        engine.add_request(_unguided(tok, "c", 10))
    assert e.value.retry_after_s >= 1.0


def test_expected_output_of_an_image_task_is_its_image():
    from services.engine.grammar import GrammarState
    from services.engine.sequence import GuidanceGroup, Role, Sequence

    grid = ImageGrid(3, 4)
    req = default_request("t", "t2i", [1] * 20, [1] * 10, output_grid=grid, max_new_tokens=5120)
    group = GuidanceGroup(req, GrammarState(None, fixed_grid=grid),
                          {Role.COND: Sequence(Role.COND, req.cond_ids),
                           Role.UNCOND: Sequence(Role.UNCOND, req.uncond_ids)})
    assert expected_output(group) == grid.span_length + IMAGE_TAIL_TOKENS
    more = grid.span_length + IMAGE_TAIL_TOKENS
    assert footprint(group, BS) == -(-(20 + more) // BS) + -(-(10 + more) // BS)


def test_async_generate_raises_queue_full_at_once(tiny):
    _, tok = tiny
    engine = _engine(tiny, step_s=1.0)
    for i in range(4):
        engine.add_request(_unguided(tok, f"r{i}", 240))
    engine.has_work = lambda: False  # hold the queue still: the thread only takes commands
    eng = AsyncEngine(engine)
    try:
        async def main():
            async for _ in eng.generate(_unguided(tok, "late", 240)):
                pass

        with pytest.raises(QueueFull) as e:
            asyncio.run(asyncio.wait_for(main(), 10))
        assert e.value.retry_after_s > 0
    finally:
        eng.shutdown()
