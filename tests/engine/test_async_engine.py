"""AsyncEngine: events on asyncio queues from the engine thread; a consumer that goes away
aborts its request and frees its KV blocks; errors surface at submission."""
from __future__ import annotations

import asyncio
import time

import pytest

from services.engine.async_engine import AsyncEngine
from services.engine.engine import Engine, EngineConfig
from services.engine.events import Finished, TextDelta
from services.engine.request import RequestError, default_request
from services.engine.scheduler import SchedulerConfig
from services.model.loader import load_checkpoint
from services.model.prompting import prepare_prompt
from services.model.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    llm, _ = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=1)
    model, tok = load_checkpoint(llm)
    eng = AsyncEngine(Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=512))))
    yield eng, tok
    eng.shutdown()


def _req(tok, rid, n):
    p = prepare_prompt(tok, "story", f"request {rid}")
    return default_request(rid, "story", p.cond, p.uncond, max_new_tokens=n, seed=3)


def test_streams_concurrent_requests_to_the_end(engine):
    eng, tok = engine

    async def collect(rid):
        return [e async for e in eng.generate(_req(tok, rid, 30))]

    async def main():
        return await asyncio.gather(collect("a"), collect("b"))

    a, b = asyncio.run(main())
    assert isinstance(a[-1], Finished) and a[-1].usage.generated_tokens == 30
    assert isinstance(b[-1], Finished) and any(isinstance(e, TextDelta) for e in b)


def test_consumer_going_away_aborts_and_frees_blocks(engine):
    eng, tok = engine

    async def main():
        stream = eng.generate(_req(tok, "long", 2000))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()

    asyncio.run(main())
    pool = eng.engine.scheduler.pool
    deadline = time.monotonic() + 10
    while (pool.num_used or eng.engine.has_work()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.num_used == 0 and "long" not in eng.engine.groups


def test_bad_request_raises_at_submission(engine):
    eng, tok = engine
    bad = default_request("bad", "story", [tok.vocab_size], [1], max_new_tokens=5)

    async def main():
        return [e async for e in eng.generate(bad)]

    with pytest.raises(RequestError, match="token id"):
        asyncio.run(main())


def test_engine_survives_a_consumer_whose_loop_closed(engine):
    """A consumer that vanishes with its event loop must not stop generation for others."""
    eng, tok = engine

    async def abandon():
        stream = eng.generate(_req(tok, "gone", 500))
        await stream.__anext__()  # then the loop closes without closing the stream

    asyncio.run(abandon())
    time.sleep(0.5)
    assert eng._thread.is_alive()

    async def after():
        return [e async for e in eng.generate(_req(tok, "next", 10))]

    assert isinstance(asyncio.run(after())[-1], Finished)
    deadline = time.monotonic() + 10
    while "gone" in eng.engine.groups and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "gone" not in eng.engine.groups and eng.engine.scheduler.pool.num_used == 0
