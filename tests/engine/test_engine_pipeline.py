"""The pipelined step: the next forward is launched before the last step's events are made
(and, for image steps, planned before the sync); tokens, events, aborts and preemption come
out exactly as with one whole step per call."""
from __future__ import annotations

from dataclasses import replace

import pytest

import services.engine.sampler as sampler_mod
from services.engine.engine import Engine, EngineConfig
from services.engine.events import Finished, ImageComplete, TextDelta
from services.engine.scheduler import SchedulerConfig
from services.model.loader import load_checkpoint
from services.model.tiny import write_tiny_checkpoint

from .test_engine_batching import requests, run


@pytest.fixture(scope="module")
def model_tok(tmp_path_factory):
    llm, _ = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=5)
    return load_checkpoint(llm)


def make_engine(model_tok, pipeline=True, images=False, **sched) -> Engine:
    model, tok = model_tok
    sc = SchedulerConfig(**{"num_blocks": 256, "block_size": 16, **sched})
    eng = Engine(model, tok, EngineConfig(sc, pipeline=pipeline))
    if images:  # text rows may only open an image: every request reaches image steps
        eng.masks.table[0].zero_()
        eng.masks.table[0, tok.special.boi] = 1
    return eng


def strip(events):
    """Events without their timings (Usage), for exact comparison."""
    return [replace(e, usage=None) if isinstance(e, Finished) else
            (type(e).__name__, e.request_id, e.index, e.codes.tolist())
            if isinstance(e, ImageComplete) else e for e in events]


class CallLog:
    """Records schedule / token read / forward launch / step return, in order."""

    def __init__(self, eng: Engine, monkeypatch):
        self.log: list[str] = []
        execute, schedule = eng.runner.execute, eng.scheduler.schedule
        read = sampler_mod.PendingTokens.read
        eng.runner.execute = lambda step: (self.log.append("launch"), execute(step))[1]
        eng.scheduler.schedule = lambda *a: (self.log.append("schedule"), schedule(*a))[1]
        emit = eng._emit
        eng._emit = lambda settled, events: (self.log.append("emit") if settled else None,
                                             emit(settled, events))[1]
        monkeypatch.setattr(sampler_mod.PendingTokens, "read",
                            lambda s: (self.log.append("read"), read(s))[1])

    def calls(self, eng: Engine) -> list[tuple[list[str], list]]:
        out = []
        while eng.has_work():
            self.log.clear()
            events = eng.step()
            out.append((list(self.log), events))
        return out


@pytest.mark.parametrize("images", [False, True], ids=["text", "images"])
def test_next_forward_launches_before_the_events(model_tok, monkeypatch, images):
    model, tok = model_tok
    eng = make_engine(model_tok, images=images)
    log = CallLog(eng, monkeypatch)
    for r in requests(tok, 3):
        eng.add_request(r)
    calls = log.calls(eng)
    seen = {"text": 0, "image": 0}
    for order, events in calls:
        if "read" in order and "launch" in order:
            # the read step's events are made after the next forward was launched
            assert order.index("read") < order.index("launch") < order.index("emit")
            blind = order.index("schedule") < order.index("read")
            seen["image" if blind else "text"] += 1
    assert seen["text"] > 0
    if images:  # image steps are planned before the sync: only the launch waits for it
        assert seen["image"] > 50
    # the first call launches and returns nothing; the last one only reads
    assert calls[0][0][-1] == "launch" and calls[0][1] == []
    assert sorted(calls[-1][0]) == ["emit", "read", "schedule"]
    assert isinstance(calls[-1][1][-1], Finished)


@pytest.mark.parametrize("images", [False, True], ids=["text", "images"])
def test_same_tokens_and_events_with_and_without_pipelining(model_tok, images):
    model, tok = model_tok
    reqs = requests(tok)
    whole, ev_whole = run(make_engine(model_tok, pipeline=False, images=images), reqs)
    piped, ev_piped = run(make_engine(model_tok, images=images), reqs)
    assert {k: f.token_ids for k, f in piped.items()} == {k: f.token_ids for k, f in whole.items()}
    for rid in whole:
        assert strip(ev_piped[rid]) == strip(ev_whole[rid]), rid
    if images:
        assert sum(isinstance(e, ImageComplete) for evs in ev_piped.values() for e in evs) >= 3


@pytest.mark.parametrize("images", [False, True], ids=["text", "images"])
def test_abort_while_a_step_is_in_flight(model_tok, images):
    model, tok = model_tok
    reqs = requests(tok, 4)
    alone, _ = run(make_engine(model_tok, images=images), reqs)
    eng = make_engine(model_tok, images=images)
    for r in reqs:
        eng.add_request(r)
    for _ in range(40):
        eng.step()
    assert eng.in_flight is not None and eng.groups["r1"] in eng.in_flight.groups
    used = eng.scheduler.pool.num_used
    mine = sum(len(s.block_table) for s in eng.groups["r1"].seqs.values())
    assert eng.abort("r1")
    assert eng.scheduler.pool.num_used == used - mine  # freed at once
    done, events = run(eng, [])
    assert [type(e) for e in events["r1"]] == [Finished] and done["r1"].reason == "aborted"
    assert len(done["r1"].token_ids) < len(alone["r1"].token_ids)
    for rid in ("r0", "r2", "r3"):
        assert done[rid].token_ids == alone[rid].token_ids
    assert eng.scheduler.pool.num_used == 0


def test_preemption_during_image_steps_changes_nothing(model_tok):
    model, tok = model_tok
    reqs = requests(tok)
    roomy, _ = run(make_engine(model_tok, images=True), reqs)
    eng = make_engine(model_tok, images=True, num_blocks=70, block_size=4)
    tight, events = run(eng, reqs)
    assert sum(f.usage.preemptions for f in tight.values()) > 0
    for rid, f in roomy.items():
        assert tight[rid].token_ids == f.token_ids
        texts = [e for e in events[rid] if isinstance(e, TextDelta)]
        assert all(e.text for e in texts)
    assert eng.scheduler.pool.num_used == 0
