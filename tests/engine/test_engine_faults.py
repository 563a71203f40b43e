"""A failing step fails only the requests it ran and the engine goes on; a step that keeps
failing (a broken device) kills the engine: AsyncEngine then fails everything in flight, logs
the cause once, answers later calls at once with EngineDead and reports itself unhealthy."""
from __future__ import annotations

import asyncio
import logging

import pytest

from services.engine.async_engine import AsyncEngine
from services.engine.engine import Engine, EngineConfig, EngineDead
from services.engine.events import Finished
from services.engine.request import default_request
from services.engine.scheduler import SchedulerConfig
from services.model.loader import load_checkpoint
from services.model.prompting import prepare_prompt
from services.model.tiny import write_tiny_checkpoint


class DeviceError(RuntimeError):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    llm, _ = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=4)
    return load_checkpoint(llm)


def _engine(tiny, **config) -> Engine:
    model, tok = tiny
    return Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=256), **config))


def _req(tok, rid, n=12):
    p = prepare_prompt(tok, "story", f"request {rid}")
    return default_request(rid, "story", p.cond, p.uncond, max_new_tokens=n, seed=5)


def _break(engine: Engine, calls: set[int] | None = None) -> None:
    """Make the runner's forward raise on these call numbers (None: always)."""
    real, count = engine.runner.execute, [0]

    def execute(step):
        count[0] += 1
        if calls is None or count[0] in calls:
            raise DeviceError(f"device fault at forward {count[0]}")
        return real(step)

    engine.runner.execute = execute


def _drain(engine: Engine) -> dict[str, Finished]:
    done = {}
    while engine.has_work():
        done.update({e.request_id: e for e in engine.step() if isinstance(e, Finished)})
    return done


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(tiny):
    _, tok = tiny
    engine = _engine(tiny)
    alone = _drain_after(engine, [_req(tok, "later")])["later"]
    engine = _engine(tiny)
    _break(engine, calls={3})
    for rid in ("a", "b"):
        engine.add_request(_req(tok, rid))
    done = _drain(engine)
    assert {done["a"].reason, done["b"].reason} == {"error"}
    assert "engine step failed: DeviceError: device fault at forward 3" in done["a"].error
    assert engine.scheduler.pool.num_used == 0 and not engine.scheduler.pool.by_hash
    later = _drain_after(engine, [_req(tok, "later")])["later"]
    assert later.reason == "length" and later.token_ids == alone.token_ids


def _drain_after(engine, requests):
    for r in requests:
        engine.add_request(r)
    return _drain(engine)


def test_steps_failing_in_a_row_raise_engine_dead(tiny):
    _, tok = tiny
    engine = _engine(tiny, max_failed_steps=2)
    _break(engine)
    engine.add_request(_req(tok, "a"))
    first = engine.step()  # fails a, the engine goes on
    assert [e.reason for e in first if isinstance(e, Finished)] == ["error"]
    engine.add_request(_req(tok, "b"))
    with pytest.raises(EngineDead, match="2 engine steps failed in a row.*device fault"):
        engine.step()


async def _collect(eng: AsyncEngine, req):
    return [e async for e in eng.generate(req)]


def test_a_dead_engine_fails_in_flight_answers_at_once_and_is_unhealthy(tiny, caplog):
    _, tok = tiny
    engine = _engine(tiny, max_failed_steps=1)
    eng = AsyncEngine(engine)
    try:
        eng.check_health()  # healthy until it breaks
        _break(engine, calls=None)

        async def main():
            events = await asyncio.wait_for(asyncio.gather(
                _collect(eng, _req(tok, "a", 200)), _collect(eng, _req(tok, "b", 200))), 30)
            with pytest.raises(EngineDead, match="device fault"):
                await asyncio.wait_for(_collect(eng, _req(tok, "c")), 5)
            return events

        with caplog.at_level(logging.ERROR, logger="services.engine"):
            a, b = asyncio.run(main())
        for events in (a, b):
            assert events[-1].reason == "error" and "device fault" in events[-1].error
        with pytest.raises(RuntimeError, match="device fault"):
            eng.check_health()
        stopped = [r for r in caplog.records if "engine stopped serving" in r.getMessage()]
        assert len(stopped) == 1
    finally:
        eng.shutdown()


def test_an_exception_outside_step_isolation_kills_the_engine(tiny):
    _, tok = tiny
    engine = _engine(tiny)
    eng = AsyncEngine(engine)
    try:
        def broken():
            raise MemoryError("scheduler state lost")

        engine.step = broken
        events = asyncio.run(asyncio.wait_for(_collect(eng, _req(tok, "a")), 30))
        assert events[-1].reason == "error" and "scheduler state lost" in events[-1].error
        with pytest.raises(RuntimeError, match="scheduler state lost"):
            eng.check_health()
    finally:
        eng.shutdown()


def test_one_failing_step_leaves_the_async_engine_healthy(tiny):
    _, tok = tiny
    engine = _engine(tiny)
    eng = AsyncEngine(engine)
    try:
        _break(engine, calls={2})
        first = asyncio.run(asyncio.wait_for(_collect(eng, _req(tok, "a")), 30))
        assert first[-1].reason == "error"
        eng.check_health()
        second = asyncio.run(asyncio.wait_for(_collect(eng, _req(tok, "b")), 30))
        assert second[-1].reason == "length" and second[-1].error is None
    finally:
        eng.shutdown()
