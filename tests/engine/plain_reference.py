"""A deliberately plain oracle of the reference (HF path) generation semantics, for engine tests.

One request, no batching, no KV cache: every step recomputes the last-position logits of each
stream from its full token list (O(n^2), obviously correct). Spec §3.4, §5, §6:

- text mode (initial, and after every EOI): visual ids masked (and see the divergences below),
  text params, no CFG;
- BOI enters image mode; the header is forced when the grid is fixed (request.output_grid, else
  the last image header of the unconditional prompt, else the first generated image's grid),
  otherwise its digits are sampled from the raw conditional logits under the digit mask;
- visual phase: forced EOL/EOI at fixed indices, else CFG in log-softmax space, non-visual
  ids masked, image params;
- the unconditional stream is the unconditional prompt plus every generated image span
  (BOI..EOI), never text; the 3-way stream is full_uncond_ids plus the current span only.

RNG convention (services/engine/rng.py, kernels/token_draw.py): the token at output index i
draws the uniform ``u = token_uniform(request.seed, i)``; with the filtered scores s, weights
``round(2^40 * exp(s - max))`` in float64, as int64, summed in ascending id order, the token is
the first id whose cumulative weight exceeds ``u * total``. Top-p orders by score descending,
ties by ascending id, with the same weights. Greedy (top_k == 1) takes the first maximum and
forced tokens draw nothing.
Deliberate divergences from the reference, as production rules: text mode also masks the
stray structure tokens EOL, IMG, EOI, PAD and BOS (the reference can sample them and feeds a
stray EOI to the unconditional stream, spec §12 item 28), and masks BOI when a known grid can
no longer finish within the budget (the reference starts the image and drops it, item 16).
"""
from __future__ import annotations

import torch

from services.engine.request import GenerationRequest, GuidanceMode, SamplingParams, StopRule
from services.engine.rng import token_uniform
from services.model.image_tokens import ImageGrid, parse_header

NEG_INF = float("-inf")


def plain_generate(model, tok, request: GenerationRequest) -> list[int]:
    """Generated ids (prompt excluded) of ``request`` under the reference HF-path semantics."""
    sp = tok.special
    grid = request.output_grid or last_header_grid(tok, request.uncond_ids)
    cond = list(request.cond_ids)
    uncond = list(request.uncond_ids)  # prompt + completed image spans
    out: list[int] = []
    span: list[int] | None = None  # the current image, BOI first; None in text mode
    while len(out) < request.max_new_tokens:
        u = token_uniform(request.seed, len(out))
        if span is None:
            scores = model.logits([cond], last_only=True)[0].clone()
            scores[sp.visual_base:] = NEG_INF
            scores[[sp.eol, sp.img, sp.eoi, sp.pad, sp.bos]] = NEG_INF
            if grid is not None and grid.span_length > request.max_new_tokens - len(out):
                scores[sp.boi] = NEG_INF
            token = sample(scores, request.text, u)
        else:
            token = image_step(model, tok, request, grid, cond, uncond + span, span, u)
        out.append(token)
        cond.append(token)
        if span is None:
            if token == sp.boi:
                span = [token]
        else:
            span.append(token)
            if token == sp.img and grid is None:
                grid = parse_header(tok, span)
            if token == sp.eoi:
                uncond += span
                span = None
        if token == sp.eos or (token == sp.eoi and request.stop is StopRule.EOI):
            break
    return out


def image_step(model, tok, request, grid, cond, uncond, span, u) -> int:
    """The next token inside an image; ``span`` holds BOI and what follows it so far."""
    sp = tok.special
    if sp.img not in span:
        j = len(span)  # 1-based index of the next token after BOI
        if grid is not None:
            forced = tok.encode_text(grid.header_text)
            return forced[j - 1] if j <= len(forced) else sp.img
        if j == 3:
            return sp.star
        if j >= 6:
            return sp.img
        allowed = sp.digits[1:] if j in (1, 4) else sp.digits
        raw = model.logits([cond], last_only=True)[0]
        scores = torch.full_like(raw, NEG_INF)
        scores[list(allowed)] = raw[list(allowed)]
        return sample(scores, request.image, u)
    k = len(span) - span.index(sp.img)  # 1-based index of the next token after IMG
    if k == grid.h * (grid.w + 1):
        return sp.eoi
    if k % (grid.w + 1) == 0:
        return sp.eol
    scores = guided_logits(model, request, cond, uncond, span)
    scores[:sp.visual_base] = NEG_INF
    return sample(scores, request.image, u)


def guided_logits(model, request, cond, uncond, span) -> torch.Tensor:
    """Visual-step logits: cond alone (NONE), or the CFG combination in log-softmax space."""
    mode, s = request.guidance.mode, request.guidance.scale
    c = model.logits([cond], last_only=True)[0]
    if mode is GuidanceMode.NONE:
        return c.clone()
    c = torch.log_softmax(c, -1)
    u = torch.log_softmax(model.logits([uncond], last_only=True)[0], -1)
    if mode is GuidanceMode.NO_TEXT:
        return s * (c - u) + u  # the reference's operand order, for bit-equality
    a = torch.log_softmax(model.logits([list(request.full_uncond_ids) + span],
                                       last_only=True)[0], -1)
    return a + request.guidance.image_scale * (u - a) + s * (c - u)


def sample(scores: torch.Tensor, params: SamplingParams, u: float) -> int:
    """Temperature, top-k (ties kept), top-p (crossing token kept), then the inverse-CDF draw
    with the uniform u. scores: [V] fp32, already masked."""
    if params.temperature != 1.0:
        scores = scores / params.temperature
    if params.top_k == 1:
        return int(scores.argmax())  # greedy: the first maximum, nothing drawn
    if 0 < params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, NEG_INF)
    if params.top_p < 1.0:
        order = torch.sort(scores, descending=True, stable=True).indices  # ties: lower id first
        cum = torch.cumsum(weights(scores)[order], 0)
        over = cum.double() > params.top_p * cum[-1].double()
        drop = torch.zeros_like(over)
        drop[1:] = over[:-1]  # shifted by one: the crossing token and the top token stay
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), NEG_INF)
    cum = torch.cumsum(weights(scores), 0)  # ascending id order, exact integers
    x = u * cum[-1].double()
    return int(torch.searchsorted(cum.double(), x.reshape(1), right=True)[0])


def weights(scores: torch.Tensor) -> torch.Tensor:
    """int64 [V]: round(2^40 * exp(s - max)), computed in float64."""
    return torch.round(torch.exp(scores.double() - scores.max().double()) * 2.0 ** 40).long()


def last_header_grid(tok, ids) -> ImageGrid | None:
    """Grid of the last image header in ``ids`` (reference rule: the unconditional prompt's last
    reference image fixes the output grid), or None when there is no IMG."""
    sp = tok.special
    ids = list(ids)
    if sp.img not in ids:
        return None
    last_img = len(ids) - 1 - ids[::-1].index(sp.img)
    last_boi = max(i for i in range(last_img) if ids[i] == sp.boi)
    return parse_header(tok, ids[last_boi:last_img + 1])
