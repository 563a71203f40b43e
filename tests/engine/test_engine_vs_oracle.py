"""The engine (batched, paged, chunked) reproduces the plain reference oracle — itself checked
token for token against the upstream transformers path (tests/engine/plain_reference.py) —
for every generation shape the spec names: t2i with a preset size, t2i auto size, x2i with one
and two reference images, an interleaved story; greedy and sampled; alone and all at once."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from services.engine.engine import Engine, EngineConfig
from services.engine.events import Finished
from services.engine.request import Guidance, SamplingParams, default_request
from services.engine.scheduler import SchedulerConfig
from services.model.ibq import VisionTokenizer
from services.model.image_tokens import ImageGrid, image_span_ids
from services.model.loader import load_checkpoint
from services.model.templates import build_prompts
from services.model.tiny import write_tiny_checkpoint

from .plain_reference import plain_generate

GREEDY = SamplingParams(top_k=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model whose head favours BOI and EOS a little, so text reaches images."""
    llm, vq_dir = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=9)
    model, tok = load_checkpoint(llm)
    with torch.no_grad():
        model.lm_head.weight[tok.special.boi] *= 6
        model.lm_head.weight[tok.special.eos] *= 2
    return model, tok, VisionTokenizer.from_dir(vq_dir)


def _spans(tok, vq, sizes):
    rng = np.random.default_rng(0)
    out = []
    for w, h in sizes:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out.append(image_span_ids(tok, vq.encode([im])[0]))
    return out


def _cases(tok, vq):
    two = _spans(tok, vq, [(96, 64), (64, 80)])
    t2i = build_prompts(tok, "t2i", "a red cat on a mat")
    x2i1 = build_prompts(tok, "x2i", "make it blue", two[:1])
    x2i2 = build_prompts(tok, "x2i", "put the second into the first", two)
    story = build_prompts(tok, "story", "tell me a story about a fox")
    sampled = SamplingParams(top_k=40, top_p=0.9, temperature=0.8)
    return [
        default_request("t2i_preset", "t2i", t2i.cond, t2i.uncond, output_grid=ImageGrid(3, 4),
                        max_new_tokens=160, text=GREEDY, image=GREEDY),
        default_request("t2i_auto", "t2i", t2i.cond, t2i.uncond, max_new_tokens=160,
                        text=GREEDY, image=GREEDY),
        default_request("x2i_one", "x2i", x2i1.cond, x2i1.uncond, max_new_tokens=160,
                        text=GREEDY, image=GREEDY),
        default_request("x2i_two", "x2i", x2i2.cond, x2i2.uncond, max_new_tokens=160,
                        text=GREEDY, image=GREEDY),
        default_request("story", "story", story.cond, story.uncond, max_new_tokens=200,
                        text=GREEDY, image=GREEDY, guidance=Guidance(scale=3.0)),
        default_request("story_sampled", "story", story.cond, story.uncond, max_new_tokens=200,
                        text=sampled, image=sampled, seed=17),
        default_request("t2i_sampled", "t2i", t2i.cond, t2i.uncond, output_grid=ImageGrid(2, 3),
                        max_new_tokens=120, text=sampled, image=sampled, seed=5),
    ]


def _engine_run(model, tok, reqs):
    eng = Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=1024, block_size=16,
                                                          max_batched_tokens=256)))
    for r in reqs:
        eng.add_request(r)
    out = {}
    while eng.has_work():
        for e in eng.step():
            if isinstance(e, Finished):
                out[e.request_id] = list(e.token_ids)
    return out


def test_engine_matches_oracle_alone_and_together(setup):
    model, tok, vq = setup
    reqs = _cases(tok, vq)
    together = _engine_run(model, tok, reqs)
    images = 0
    for req in reqs:
        want = plain_generate(model, tok, req)
        assert together[req.request_id] == want, req.request_id
        alone = _engine_run(model, tok, [req])[req.request_id]
        assert alone == together[req.request_id], req.request_id
        images += want.count(tok.special.eoi)
    assert images >= len(reqs)  # the cases really exercise image generation


def test_three_way_guidance_matches_oracle(setup):
    model, tok, vq = setup
    story = build_prompts(tok, "story", "a fox in the snow")
    full_uncond = build_prompts(tok, "t2i", "").uncond
    req = default_request("three", "story", story.cond, story.uncond, max_new_tokens=150,
                          output_grid=ImageGrid(2, 3),
                          text=GREEDY, image=GREEDY)
    req = dataclasses.replace(req, full_uncond_ids=full_uncond, guidance=Guidance(
        mode=Guidance().mode.__class__("no_text_img_cfg"), scale=3.0, image_scale=1.5))
    got = _engine_run(model, tok, [req])["three"]
    assert got == plain_generate(model, tok, req)
    assert got.count(tok.special.eoi) >= 2  # A was reset at a second BOI
