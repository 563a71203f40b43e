"""Tests of the plain generation oracle itself (tests/engine/plain_reference.py), on a tiny
random checkpoint with the synthetic vocabulary.

A random model almost never samples BOI, so ``Scripted`` steers the conditional stream in
text mode (and, when asked, the first auto header) by boosting chosen ids; every image-mode
decision is still the oracle's own.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from services.engine.request import (Guidance, GuidanceMode, SamplingParams, StopRule,
                                     default_request)
from services.model.image_tokens import (ImageGrid, header_ids, image_span_ids, parse_header,
                                         parse_image_span)
from services.model.templates import build_prompts

from .plain_reference import plain_generate, sample

GREEDY = SamplingParams(top_k=1)
BOOST = 1e4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from services.model.loader import load_checkpoint
    from services.model.tiny import write_tiny_checkpoint

    llm_dir, _ = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    return load_checkpoint(llm_dir)


class Scripted:
    """The tiny model, recording every sequence it scores. On conditional sequences in text
    mode it boosts BOI once ``text_run`` text tokens follow the prompt or the last EOI, or EOS
    once ``eos_after`` images are complete; inside the first image it boosts the characters of
    ``first_header`` (the oracle's digit mask still applies)."""

    def __init__(self, model, tok, cond, text_run=2, eos_after=None, first_header=None):
        self.model, self.sp, self.cond = model, tok.special, list(cond)
        self.text_run, self.eos_after = text_run, eos_after
        self.first_header = tok.encode_text(first_header) if first_header else []
        self.seen: list[list[int]] = []

    def logits(self, seqs, last_only=True):
        assert last_only
        self.seen.extend(list(s) for s in seqs)
        out = self.model.logits(seqs, last_only=True)
        return [self._steer(list(s), l) for s, l in zip(seqs, out)]

    def _steer(self, seq, logits):
        if seq[:len(self.cond)] != self.cond:
            return logits
        gen, sp = seq[len(self.cond):], self.sp
        boost = torch.zeros_like(logits)
        last_boi = max((i for i, t in enumerate(gen) if t == sp.boi), default=-1)
        last_eoi = max((i for i, t in enumerate(gen) if t == sp.eoi), default=-1)
        if last_boi > last_eoi:  # inside an image
            j = len(gen) - last_boi
            if gen.count(sp.boi) == 1 and j <= len(self.first_header):
                boost[self.first_header[j - 1]] = BOOST
        elif self.eos_after is not None and gen.count(sp.eoi) >= self.eos_after:
            boost[sp.eos] = BOOST
        elif len(gen) - last_eoi - 1 >= self.text_run:
            boost[sp.boi] = BOOST
        return logits + boost


def make_request(tok, task="t2i", question="a red cat", **overrides):
    pair = build_prompts(tok, task, question)
    overrides.setdefault("seed", 7)
    return default_request("r", task, pair.cond, pair.uncond, **overrides)


def split_output(tok, out):
    """[("text", ids) | ("image", span)] in order; a trailing unfinished image counts as one."""
    sp, parts, i = tok.special, [], 0
    while i < len(out):
        if out[i] == sp.boi:
            end = out.index(sp.eoi, i) + 1 if sp.eoi in out[i:] else len(out)
            parts.append(("image", out[i:end]))
        else:
            end = out.index(sp.boi, i) if sp.boi in out[i:] else len(out)
            parts.append(("text", out[i:end]))
        i = end
    return parts


def test_fixed_grid_output_is_well_formed(tiny):
    model, tok = tiny
    grid = ImageGrid(3, 4)
    req = make_request(tok, output_grid=grid, max_new_tokens=200)
    out = plain_generate(Scripted(model, tok, req.cond_ids, text_run=2, eos_after=2), tok, req)
    parts = split_output(tok, out)
    assert [kind for kind, _ in parts] == ["text", "image", "text", "image", "text"]
    assert len(parts[0][1]) == 2 and len(parts[2][1]) == 2
    assert parts[4][1] == [tok.special.eos]
    for _, span in parts[1::2]:
        assert span[:grid.header_length] == header_ids(tok, grid)
        assert parse_image_span(tok, span).shape == (3, 4)  # rows of w visual ids, EOL, EOI
    text = [t for kind, ids in parts if kind == "text" for t in ids]
    assert not any(tok.is_visual(t) for t in text)


def test_auto_header_is_sampled_under_the_digit_mask_then_replayed(tiny):
    model, tok = tiny
    # The script pushes "0*1" (a zero first digit, a star where a digit must be): the mask wins.
    req = make_request(tok, max_new_tokens=30, image=GREEDY)
    out = plain_generate(Scripted(model, tok, req.cond_ids, first_header="0*1"), tok, req)
    grid = parse_header(tok, out[2:])
    assert 10 <= grid.h <= 99 and 10 <= grid.w <= 99
    # Steered to a small auto grid, the second image replays the first header (unsteered).
    grid = ImageGrid(10, 11)
    budget = 2 + grid.span_length + 2 + grid.span_length  # BOI needs room for the image
    req = make_request(tok, max_new_tokens=budget, guidance=Guidance(GuidanceMode.NONE))
    out = plain_generate(Scripted(model, tok, req.cond_ids, first_header="10*11"), tok, req)
    first, second = [span for kind, span in split_output(tok, out) if kind == "image"]
    assert parse_image_span(tok, first).shape == (10, 11)
    assert second[:grid.header_length] == header_ids(tok, grid)
    short = plain_generate(Scripted(model, tok, req.cond_ids, first_header="10*11"), tok,
                           dataclasses.replace(req, max_new_tokens=budget - 1))
    assert short.count(tok.special.boi) == 1  # no room left: the second image never starts


def test_reference_image_fixes_the_grid(tiny):
    model, tok = tiny
    gen = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, tok.special.num_visual, shape, generator=gen)
             for shape in ((2, 3), (3, 2))]
    pair = build_prompts(tok, "x2i", "edit", [image_span_ids(tok, c) for c in codes])
    req = default_request("r", "x2i", pair.cond, pair.uncond, max_new_tokens=40, seed=1)
    out = plain_generate(Scripted(model, tok, req.cond_ids, text_run=1), tok, req)
    span = out[1:out.index(tok.special.eoi) + 1]
    assert parse_image_span(tok, span).shape == (3, 2)  # the LAST reference's grid


def test_uncond_stream_is_never_fed_text(tiny):
    model, tok = tiny
    req = make_request(tok, output_grid=ImageGrid(2, 3), max_new_tokens=60)
    scripted = Scripted(model, tok, req.cond_ids, text_run=3)
    out = plain_generate(scripted, tok, req)
    sp = tok.special
    image_tokens, inside = [], False
    for t in out:
        inside = inside or t == sp.boi
        if inside:
            image_tokens.append(t)
        inside = inside and t != sp.eoi
    n = len(req.uncond_ids)
    uncond_calls = [s for s in scripted.seen if s[:n] == list(req.uncond_ids)]
    assert len(uncond_calls) == sum(tok.is_visual(t) for t in out)  # one per sampled visual
    for seq in uncond_calls:
        suffix = seq[n:]
        assert suffix == image_tokens[:len(suffix)] and suffix[-1] != sp.eoi
    assert len(image_tokens) < len(out)  # there was text to leave out


def test_three_way_stream_holds_only_the_current_image(tiny):
    model, tok = tiny
    full = (tok.special.bos, 100, 101)
    req = make_request(tok, output_grid=ImageGrid(2, 2), max_new_tokens=30, full_uncond_ids=full,
                       guidance=Guidance(GuidanceMode.NO_TEXT_IMG_CFG, 3.0, 2.0))
    scripted = Scripted(model, tok, req.cond_ids, text_run=1)
    out = plain_generate(scripted, tok, req)
    third = [s[len(full):] for s in scripted.seen if tuple(s[:len(full)]) == full]
    assert len(third) == sum(tok.is_visual(t) for t in out) and out.count(tok.special.eoi) >= 2
    assert all(s[0] == tok.special.boi and s.count(tok.special.boi) == 1 for s in third)


def test_visual_step_is_cfg_in_log_softmax_space(tiny):
    model, tok = tiny
    grid = ImageGrid(2, 2)
    req = make_request(tok, output_grid=grid, max_new_tokens=grid.span_length, image=GREEDY,
                       guidance=Guidance(GuidanceMode.NO_TEXT, 3.0))
    out = plain_generate(Scripted(model, tok, req.cond_ids, text_run=0), tok, req)
    first_visual = grid.header_length  # BOI was the first generated token
    cond = list(req.cond_ids) + out[:first_visual]
    uncond = list(req.uncond_ids) + out[:first_visual]
    c, u = (torch.log_softmax(model.logits([s], last_only=True)[0], -1) for s in (cond, uncond))
    combined = u + 3.0 * (c - u)
    assert out[first_visual] == tok.special.visual_base + int(combined[tok.special.visual_base:].argmax())


def test_greedy_text_is_the_masked_argmax_and_none_mode_has_no_uncond(tiny):
    model, tok = tiny
    req = make_request(tok, text=GREEDY, max_new_tokens=5, guidance=Guidance(GuidanceMode.NONE))
    scripted = Scripted(model, tok, req.cond_ids, text_run=99)
    out = plain_generate(scripted, tok, req)
    seq = list(req.cond_ids)
    for t in out:
        logits = model.logits([seq], last_only=True)[0][:tok.special.visual_base].clone()
        sp = tok.special
        logits[[sp.eol, sp.img, sp.eoi, sp.pad, sp.bos]] = float("-inf")  # stray structure
        assert t == int(logits.argmax())
        seq.append(t)
    assert all(s[:len(req.cond_ids)] == list(req.cond_ids) for s in scripted.seen)


def test_seed_reproduces_and_differs(tiny):
    model, tok = tiny
    req = make_request(tok, output_grid=ImageGrid(2, 2), max_new_tokens=20)

    def run(r):
        return plain_generate(Scripted(model, tok, r.cond_ids, text_run=4), tok, r)

    first = run(req)
    assert run(req) == first
    assert run(dataclasses.replace(req, seed=8)) != first


def test_stop_rules_and_budget(tiny):
    model, tok = tiny
    sp = tok.special
    grid = ImageGrid(2, 3)
    req = make_request(tok, output_grid=grid, max_new_tokens=60)

    def run(r):
        return plain_generate(Scripted(model, tok, r.cond_ids, text_run=1), tok, r)

    full = run(req)
    assert len(full) == 60 and full.count(sp.eoi) >= 2  # EOS rule: text goes on after EOI
    at_eoi = run(dataclasses.replace(req, stop=StopRule.EOI))
    assert at_eoi == full[:full.index(sp.eoi) + 1]
    cut = run(dataclasses.replace(req, max_new_tokens=7))
    assert len(cut) == 7 and sp.boi not in cut  # an image that cannot finish never starts


def test_sample_filters():
    def draws(scores, params):
        return {sample(scores, params, i / 300) for i in range(300)}

    ties = torch.tensor([3.0, 3.0, 2.5, 2.5])
    assert draws(ties, SamplingParams(top_k=1)) == {0}  # greedy: the first maximum
    assert draws(ties, SamplingParams(top_k=2)) == {0, 1}
    assert draws(ties, SamplingParams(top_k=3)) == {0, 1, 2, 3}  # ties survive top-k
    assert draws(ties, SamplingParams(top_k=0)) == {0, 1, 2, 3}
    probs = torch.tensor([0.5, 0.3, 0.2]).log()
    assert draws(probs, SamplingParams(top_p=0.4)) == {0}  # the top token always stays
    assert draws(probs, SamplingParams(top_p=0.6)) == {0, 1}  # the crossing token stays
    assert draws(probs, SamplingParams(top_p=1.0)) == {0, 1, 2}
    masked = torch.tensor([float("-inf"), 0.0, float("-inf")])
    assert draws(masked, SamplingParams(temperature=0.3)) == {1}
