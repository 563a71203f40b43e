"""Top-k / top-p filtering and the inverse-CDF draw over a large vocabulary (spec §6.2).

Definition (:func:`draw_tokens_reference`, plain, full vocabulary), per row of scores [V]:

1. top_k == 1 is greedy: the first index of the maximum; nothing is drawn.
2. Top-k (1 < k < V): every score >= the k-th largest survives (ties kept).
3. Top-p (p < 1): order the survivors by score descending, ties by ascending id; remove a token
   when the mass *before* it already exceeds p (the crossing token and the top token stay).
4. Draw with the row's uniform u in [0, 1): the candidates in ascending id order, the first
   whose cumulative weight exceeds ``u * total``.

Weights are fixed point: ``round(2^40 * exp(s - max))`` in float64, as int64. Integer sums are
exact in any order, so the top-p cut and the draw come out bit-identical whether computed over
the whole vocabulary, over a compacted candidate list of any length, or by a parallel scan on
a GPU: a row's token never depends on the batch around it. (Rounding moves each weight by at
most 2^-41 of the top token's, and tokens below that get none: summed over all 282,926 ids the
distribution moves by < 1.3e-7, below the fp32 rounding of the scores themselves.)

Fast paths (:func:`draw_tokens`), chosen per row on the host from the parameters
(:class:`DrawPlan`), so the path never waits for the device:

- top-k without top-p (image rows) on CUDA: :mod:`kernels.triton_draw`, no sort at all (a
  histogram then a radix select find the k-th score, exact int64 tile sums find the token);
- top-k rows otherwise: one ``torch.topk`` with the largest k among them; each row masks the
  candidates below its own k-th score; a full-row count of the scores tied at or above that
  k-th score proves the candidates complete (else the row is marked -1 for the exact path);
  top-p sorts the k candidates only; the draw reorders them by id;
- rows without top-k never sort unless they use top-p (then the full-sort path: the slow path).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .registry import draw_impl_name

NEG_INF = float("-inf")
WEIGHT_BITS = 40
NEEDS_EXACT = -1  # draw_tokens' mark for a row whose ties overflow the shared top-k


def fixed_point_weights(scores: torch.Tensor) -> torch.Tensor:
    """int64 [..., N]: ``round(2^40 * exp(s - max))``, max over the last dim (an all -inf row
    gets weights 0). Elementwise given the max, so a compacted copy of a row's candidates gets
    the same weights as the full row when it holds the row's maximum."""
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isinf(top), 0.0, top)
    return torch.round(torch.exp(scores.double() - top.double()) * 2.0 ** WEIGHT_BITS).long()


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """int64 [R]: the first position whose cumulative weight exceeds ``u * total``.
    weights: int64 [R, N] in the draw order; uniforms: float64 [R] in [0, 1)."""
    cum = weights.cumsum(-1)                                   # exact
    x = uniforms[:, None] * cum[:, -1:].double()               # < total for u < 1
    pos = torch.searchsorted(cum.double(), x, right=True)      # [R, 1]
    return pos.squeeze(1).clamp_(max=weights.shape[-1] - 1)


def top_p_removed(w_desc: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """bool [R, N]: which tokens top-p removes. w_desc: int64 weights ordered by score
    descending, ties by ascending id; top_p: float64 [R] (>= 1 removes nothing)."""
    cum = w_desc.cumsum(-1)
    over = cum.double() > top_p[:, None] * cum[:, -1:].double()
    removed = torch.zeros_like(over)
    removed[:, 1:] = over[:, :-1]  # shifted by one: the crossing token and the top token stay
    return removed & (top_p < 1.0)[:, None]


def _top_p_removed_by_id(scores: torch.Tensor, weights: torch.Tensor, top_p: torch.Tensor
                         ) -> torch.Tensor:
    """bool [R, N]: top-p's removals, for scores/weights [R, N] in ascending id order (so the
    stable descending sort breaks ties by id)."""
    order = scores.sort(dim=-1, descending=True, stable=True).indices
    removed = top_p_removed(weights.gather(1, order), top_p)
    return torch.zeros_like(removed).scatter(1, order, removed)


def filter_scores_reference(scores: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
                            ) -> torch.Tensor:
    """[R, V] fp32: scores with the tokens top-k and top-p remove set to -inf (full sorts).
    top_k: int64 [R] (<= 0 or >= V: off); top_p: float64 [R] (>= 1: off)."""
    v = scores.shape[-1]
    k_on = (top_k > 0) & (top_k < v)
    kth = scores.sort(-1, descending=True).values.gather(1, (top_k.clamp(1, v) - 1)[:, None])
    scores = scores.masked_fill(k_on[:, None] & (scores < kth), NEG_INF)
    return _top_p_full(scores, top_p)


def _top_p_full(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-p over whole rows (a full sort): removed tokens set to -inf."""
    return scores.masked_fill(_top_p_removed_by_id(scores, fixed_point_weights(scores), top_p),
                              NEG_INF)


def draw_tokens_reference(scores: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                          uniforms: torch.Tensor) -> torch.Tensor:
    """int64 [R]: the definition (module docstring), over the full vocabulary. Also the exact
    (slow) path for the rows :func:`draw_tokens` sends back."""
    drawn = inverse_cdf(fixed_point_weights(filter_scores_reference(scores, top_k, top_p)),
                        uniforms)
    return torch.where(top_k == 1, scores.argmax(-1), drawn)


@dataclass(frozen=True)
class DrawPlan:
    """Which path each row takes, from the host-side parameters (no device sync).

    select_rows: 1 < k < V without top-p (image rows: the sort-free Triton draw on CUDA, else
    one topk with ``select_k_max``); top_k_rows: 1 < k < V with top-p (one topk with
    ``k_max``); greedy_rows: k == 1; full_rows: no top-k, no top-p (no sort at all);
    sorted_rows: no top-k but top-p (the full-sort slow path). Skipped rows (forced tokens)
    are in none of them."""

    num_rows: int
    select_rows: tuple[int, ...]
    select_k_max: int
    top_k_rows: tuple[int, ...]
    k_max: int
    greedy_rows: tuple[int, ...]
    full_rows: tuple[int, ...]
    sorted_rows: tuple[int, ...]

    @classmethod
    def build(cls, top_k: Sequence[int], top_p: Sequence[float], vocab_size: int,
              skip: Sequence[bool] | None = None) -> "DrawPlan":
        skip = skip or [False] * len(top_k)
        rows = [r for r in range(len(top_k)) if not skip[r]]
        k_on = [r for r in rows if 1 < top_k[r] < vocab_size]
        select = [r for r in k_on if top_p[r] >= 1.0]
        with_p = [r for r in k_on if top_p[r] < 1.0]
        k_off = [r for r in rows if top_k[r] != 1 and not 0 < top_k[r] < vocab_size]
        return cls(
            num_rows=len(top_k), select_rows=tuple(select),
            select_k_max=max((top_k[r] for r in select), default=0),
            top_k_rows=tuple(with_p), k_max=max((top_k[r] for r in with_p), default=0),
            greedy_rows=tuple(r for r in rows if top_k[r] == 1),
            full_rows=tuple(r for r in k_off if top_p[r] >= 1.0),
            sorted_rows=tuple(r for r in k_off if top_p[r] < 1.0))


def draw_tokens(scores: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                uniforms: torch.Tensor, plan: DrawPlan, select: str | None = None
                ) -> torch.Tensor:
    """int64 [R]: each row's token, equal to :func:`draw_tokens_reference`; ``NEEDS_EXACT``
    where a row's ties at its k-th score overflow the topk path's shared k (redo those rows
    with the reference); 0 on skipped rows. scores: fp32 [R, V]; top_k int64, top_p and
    uniforms float64, all [R] on the scores' device. ``select``: ``"triton"`` or ``"torch"``
    for ``plan.select_rows`` (default: :func:`kernels.registry.draw_impl_name`)."""
    tokens = torch.zeros(plan.num_rows, dtype=torch.int64, device=scores.device)
    if plan.select_rows and draw_impl_name(scores.device, select) == "triton":
        from .triton_draw import draw_top_k  # lazy: imports triton

        whole = len(plan.select_rows) == plan.num_rows
        draw_top_k(scores.contiguous(), top_k, uniforms, tokens,  # writes tokens in place
                   None if whole else _device_index(plan.select_rows, scores.device))
        select_path = ()
    else:
        select_path = ((plan.select_rows, lambda *a: _draw_top_k(*a, plan.select_k_max, False)),)
    paths = (*select_path,
             (plan.top_k_rows, lambda *a: _draw_top_k(*a, plan.k_max, True)),
             (plan.full_rows, lambda s, k, p, u: inverse_cdf(fixed_point_weights(s), u)),
             (plan.sorted_rows, lambda s, k, p, u: inverse_cdf(
                 fixed_point_weights(_top_p_full(s, p)), u)),
             (plan.greedy_rows, lambda s, k, p, u: s.argmax(-1)))
    for rows, draw in paths:
        if not rows:
            continue
        if len(rows) == plan.num_rows:  # the whole batch: no gather
            tokens = draw(scores, top_k, top_p, uniforms)
            continue
        index = _device_index(rows, scores.device)
        picked = (t.index_select(0, index) for t in (scores, top_k, top_p, uniforms))
        tokens = tokens.index_copy(0, index, draw(*picked))
    return tokens


def _device_index(rows: Sequence[int], device) -> torch.Tensor:
    return torch.tensor(rows).to(device, non_blocking=True)


def _draw_top_k(scores: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                uniforms: torch.Tensor, k_max: int, any_top_p: bool) -> torch.Tensor:
    """Rows with 1 < k <= k_max: work on the k_max best candidates only."""
    v = scores.shape[-1]
    vals, idx = torch.topk(scores, k_max, dim=-1)                 # [R, K], descending
    kth = vals.gather(1, top_k[:, None] - 1)                      # [R, 1]
    # Every finite score >= kth must be among the K candidates, else the row is inexact.
    ties = (scores >= kth.clamp(min=torch.finfo(scores.dtype).min)).sum(-1)
    keep = (vals >= kth) & (vals > NEG_INF)
    ids, by_id = torch.where(keep, idx, v).sort(-1)               # [R, K] ascending ids
    vals = torch.where(ids < v, vals.gather(1, by_id), NEG_INF)
    weights = fixed_point_weights(vals)                           # max = the row's top score
    if any_top_p:
        weights = weights.masked_fill(_top_p_removed_by_id(vals, weights, top_p), 0)
    token = ids.gather(1, inverse_cdf(weights, uniforms)[:, None]).squeeze(1)
    return torch.where(ties > k_max, NEEDS_EXACT, token)
