"""One bad request never fails another: non-finite numbers are refused by validation naming
the public field, and a request that gets past it anyway (validation bypassed) ends alone with
reason "error" and a message while the request beside it produces exactly its tokens."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from services.engine.engine import Engine, EngineConfig
from services.engine.events import Finished
from services.engine.request import (Guidance, RequestError, SamplingParams, StopRule,
                                     default_request)
from services.engine.scheduler import SchedulerConfig
from services.model.loader import load_checkpoint
from services.model.prompting import prepare_prompt
from services.model.tiny import write_tiny_checkpoint

INF, NAN = math.inf, math.nan


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model whose head favours BOI, so requests reach their (guided) image soon."""
    llm, _ = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=2)
    model, tok = load_checkpoint(llm)
    with torch.no_grad():
        model.lm_head.weight[tok.special.boi] *= 8
    return model, tok


def _t2i(tok, rid, **overrides):
    p = prepare_prompt(tok, "t2i", f"a picture {rid}", size="3*4")
    return default_request(rid, "t2i", p.cond, p.uncond, output_grid=p.output_grid,
                           max_new_tokens=40, seed=11, **overrides)


@pytest.mark.parametrize("field,overrides", [
    ("guidance.scale", {"guidance": Guidance(scale=NAN)}),
    ("guidance.scale", {"guidance": Guidance(scale=INF)}),
    ("guidance.image_scale", {"guidance": Guidance(image_scale=-INF)}),
    ("text_sampling.temperature", {"text": SamplingParams(temperature=NAN)}),
    ("image_sampling.temperature", {"image": SamplingParams(temperature=INF)}),
    ("image_sampling.top_p", {"image": SamplingParams(top_p=NAN)}),
    ("text_sampling.top_p", {"text": SamplingParams(top_p=INF)}),
    ("text_sampling.top_k", {"text": SamplingParams(top_k=2.0)}),
    ("stop_at_image_end", {"stop": StopRule.EOI, "task": "story"}),
    ("seed", {"seed": NAN}),
])
def test_validation_names_the_public_field(tiny, field, overrides):
    model, tok = tiny
    task = overrides.pop("task", "t2i")
    req = replace(_t2i(tok, "v"), task=default_request("x", task, [1], [1]).task, **overrides)
    with pytest.raises(RequestError, match=rf"^{field}: "):
        req.validate(tok.vocab_size, model.config.max_position_embeddings)


def _run(model, tok, requests, pipeline: bool) -> dict[str, Finished]:
    engine = Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=256), pipeline=pipeline))
    for req in requests:
        engine.add_request(req)
    done = {}
    while engine.has_work():
        done.update({e.request_id: e for e in engine.step() if isinstance(e, Finished)})
    engine.scheduler.pool.check()
    assert engine.scheduler.pool.num_used == 0
    return done


def _poisoned(tok, rid, **overrides):
    """A request with a bad value that skips validation (as a caller bug or a future field
    might): the engine must contain it."""
    req = _t2i(tok, rid, **overrides)
    object.__setattr__(req, "validate", lambda *a, **k: None)
    return req


@pytest.mark.parametrize("pipeline", [True, False])
@pytest.mark.parametrize("poison", [{"guidance": Guidance(scale=NAN)},
                                    {"image": SamplingParams(temperature=INF)}])
def test_a_poisoned_request_fails_alone(tiny, pipeline, poison):
    model, tok = tiny
    alone = _run(model, tok, [_t2i(tok, "innocent")], pipeline)["innocent"]
    assert tok.special.eoi in alone.token_ids  # the innocent request drew a whole image
    both = _run(model, tok, [_t2i(tok, "innocent"), _poisoned(tok, "bad", **poison)], pipeline)
    assert both["bad"].reason == "error" and "sampling failed" in both["bad"].error
    assert both["innocent"].reason == alone.reason != "error"
    assert both["innocent"].token_ids == alone.token_ids and alone.error is None


def test_a_request_whose_events_fail_ends_alone(tiny, monkeypatch):
    """Any exception while making one request's events (an image span that does not parse,
    say) ends that request with an error; the others go on."""
    model, tok = tiny
    alone = _run(model, tok, [_t2i(tok, "innocent")], True)["innocent"]
    real = Engine._image_events

    def broken(self, d, events):
        if d.group.request_id == "bad":
            raise ValueError("image span is not well formed")
        return real(self, d, events)

    monkeypatch.setattr(Engine, "_image_events", broken)
    both = _run(model, tok, [_t2i(tok, "innocent"), _t2i(tok, "bad")], True)
    assert both["bad"].reason == "error" and "image span is not well formed" in both["bad"].error
    assert both["innocent"].token_ids == alone.token_ids
