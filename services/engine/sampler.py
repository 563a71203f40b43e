"""Per-row constrained sampling with classifier-free guidance, vectorised over the batch
(spec §6.2): grammar mask -> CFG in log-softmax space (visual rows) -> ÷T -> top-k (ties kept)
-> top-p (crossing token kept) -> softmax -> draw from the request's own generator.

Every row is computed independently of the others, and each request draws from its own
seeded generator, so a request's tokens do not depend on which requests share the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from services.model.text_tokenizer import SpecialIds

from .grammar import StepKind

NEG_INF = float("-inf")


@dataclass
class SamplingBatch:
    """Per-row parameters, as device tensors [R] (built by the engine each step)."""

    kind: torch.Tensor          # int64 StepKind
    forced: torch.Tensor        # int64, -1 where not forced
    allow_boi: torch.Tensor     # bool: an image may start (budget left for a fixed grid)
    temperature: torch.Tensor   # fp32
    top_k: torch.Tensor         # int64, <= 0 disables
    top_p: torch.Tensor         # fp32, >= 1 disables
    cfg_scale: torch.Tensor     # fp32
    image_cfg_scale: torch.Tensor  # fp32 (3-way guidance only)
    generators: list[torch.Generator]


class GrammarMasks:
    """Vocabulary-wide boolean tables for each step kind, built once per device."""

    def __init__(self, special: SpecialIds, vocab_size: int, device):
        ids = torch.arange(vocab_size, device=device)
        self.visual = ids >= special.visual_base
        # Text mode masks visual ids (reference) and the structure tokens that are only
        # valid inside an image or at sequence start (spec §12 item 28).
        stray = torch.tensor([special.eol, special.img, special.eoi, special.pad, special.bos],
                             device=device)
        self.text = ~self.visual & ~torch.isin(ids, stray)
        self.boi = ids == special.boi
        digits = torch.tensor(special.digits, device=device)
        self.digit = torch.isin(ids, digits)
        self.digit_nonzero = torch.isin(ids, digits[1:])

    def allowed(self, kind: torch.Tensor, allow_boi: torch.Tensor) -> torch.Tensor:
        """[R, V] bool: which ids each row may take (forced rows are handled elsewhere)."""
        k = kind[:, None]
        text = self.text[None] & (allow_boi[:, None] | ~self.boi[None])
        out = torch.where(k == StepKind.VISUAL, self.visual[None], text)
        out = torch.where(k == StepKind.DIGIT, self.digit[None], out)
        return torch.where(k == StepKind.DIGIT_NONZERO, self.digit_nonzero[None], out)


def guided_scores(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor,
                  full_uncond: torch.Tensor | None = None,
                  image_scale: torch.Tensor | None = None) -> torch.Tensor:
    """CFG in log-softmax space (spec §6.2): s*(c - u) + u; with a full-unconditional stream A
    (spec §6.4): A + a*(u - A) + s*(c - u). All fp32; rows [N, V], scales [N]."""
    c = torch.log_softmax(cond, dim=-1)
    u = torch.log_softmax(uncond, dim=-1)
    s = scale[:, None]
    if full_uncond is None:
        return s * (c - u) + u
    a = torch.log_softmax(full_uncond, dim=-1)
    return a + image_scale[:, None] * (u - a) + s * (c - u)


def filter_top_k_top_p(scores: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per-row top-k (every score >= the k-th largest survives) then top-p (sorted cumulative
    softmax; tokens past p removed, shifted by one so the crossing and top tokens stay)."""
    V = scores.shape[-1]
    k_on = (top_k > 0) & (top_k < V)
    if k_on.any():
        k = torch.where(k_on, top_k, torch.ones_like(top_k))
        kth = torch.topk(scores, int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
        scores = scores.masked_fill(k_on[:, None] & (scores < kth), NEG_INF)
    p_on = top_p < 1.0
    if p_on.any():
        rows = p_on.nonzero().squeeze(1)
        sub = scores[rows]
        sorted_scores, order = torch.sort(sub, descending=True, dim=-1)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        remove = cum > top_p[rows][:, None]
        remove[:, 1:] = remove[:, :-1].clone()
        remove[:, 0] = False
        sub = sub.masked_fill(remove.scatter(1, order, remove), NEG_INF)
        scores = scores.index_copy(0, rows, sub)
    return scores


def sample(cond: torch.Tensor, uncond: torch.Tensor | None, full_uncond: torch.Tensor | None,
           batch: SamplingBatch, masks: GrammarMasks) -> torch.Tensor:
    """cond: fp32 logits [R, V]; uncond/full_uncond: [R, V] (only VISUAL rows are read) or
    None. Returns int64 tokens [R]."""
    scores = cond
    visual = batch.kind == StepKind.VISUAL
    if uncond is not None and visual.any():
        rows = visual.nonzero().squeeze(1)
        guided = guided_scores(cond[rows], uncond[rows], batch.cfg_scale[rows],
                               None if full_uncond is None else full_uncond[rows],
                               batch.image_cfg_scale[rows])
        scores = scores.index_copy(0, rows, guided)
    scores = scores.masked_fill(~masks.allowed(batch.kind, batch.allow_boi), NEG_INF)
    t = batch.temperature[:, None]
    scores = torch.where(t != 1.0, scores / t, scores)
    scores = filter_top_k_top_p(scores, batch.top_k, batch.top_p)
    tokens = _draw(scores, batch)
    forced = batch.forced >= 0
    return torch.where(forced, batch.forced, tokens)


def _draw(scores: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Greedy rows (top_k == 1) take the argmax; the others draw from their own generator.
    Forced rows draw nothing, so forced tokens never consume randomness."""
    tokens = scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    draw = ((batch.top_k != 1) & (batch.forced < 0)).nonzero().squeeze(1).tolist()
    for row in draw:
        tokens[row] = torch.multinomial(probs[row], 1, generator=batch.generators[row])[0]
    return tokens
