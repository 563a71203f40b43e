"""The fast draw (one topk over the batch's largest k, candidates only) equals the plain
full-vocabulary definition and the oracle's single-row sampler, token for token, on random rows
built to hit the edge cases: ties, -inf masks, fewer finite scores than k, top_k 1, tiny top_p,
filters off, weights that underflow."""
from __future__ import annotations

import pytest
import torch

from kernels.token_draw import (NEEDS_EXACT, DrawPlan, draw_tokens, draw_tokens_reference,
                                filter_scores_reference, fixed_point_weights)
from services.engine.request import SamplingParams
from tests.engine.plain_reference import sample as oracle_sample

NEG_INF = float("-inf")


def _row(kind: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(vocab, generator=gen)
    if kind == 1:    # few distinct values: ties everywhere, also at the k-th score
        x = torch.round(x * 2) / 2
    elif kind == 2:  # a grammar mask: most ids -inf
        x[torch.rand(vocab, generator=gen) < 0.9] = NEG_INF
    elif kind == 3:  # fewer finite scores than any useful k
        x[torch.randperm(vocab, generator=gen)[3:]] = NEG_INF
    elif kind == 4:  # all tied
        x = torch.full((vocab,), 0.25)
    elif kind == 5:  # a wide spread: most weights underflow to 0 on the 2^-40 grid
        x = x * 60
    if torch.isinf(x).all():
        x[int(torch.randint(vocab, (1,), generator=gen))] = 1.0
    return x


def random_batch(seed: int, rows: int, vocab: int):
    """scores [R, V] fp32 and per-row top_k, top_p, uniforms as host lists."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.stack([_row(r % 6, vocab, gen) for r in range(rows)])
    ks = [0, 1, 2, 5, 40, vocab - 1, vocab, vocab + 5, -1]
    ps = [1.0, 0.9, 0.5, 1e-6]
    top_k = [ks[int(i)] if i < len(ks) else int(torch.randint(1, vocab + 1, (1,), generator=gen))
             for i in torch.randint(len(ks) + 3, (rows,), generator=gen)]
    top_p = [ps[int(i)] if i < len(ps) else float(torch.rand(1, generator=gen))
             for i in torch.randint(len(ps) + 2, (rows,), generator=gen)]
    uniforms = torch.rand(rows, generator=gen, dtype=torch.float64).tolist()
    return scores, top_k, top_p, uniforms


def tensors(top_k, top_p, uniforms):
    return (torch.tensor(top_k), torch.tensor(top_p, dtype=torch.float64),
            torch.tensor(uniforms, dtype=torch.float64))


def fast_draw(scores, top_k, top_p, uniforms, skip=None):
    """draw_tokens, with rows marked NEEDS_EXACT redone on the reference (as the sampler does);
    also returns how many rows were marked."""
    plan = DrawPlan.build(top_k, top_p, scores.shape[-1], skip)
    k, p, u = tensors(top_k, top_p, uniforms)
    out = draw_tokens(scores, k, p, u, plan)
    redo = out == NEEDS_EXACT
    return torch.where(redo, draw_tokens_reference(scores, k, p, u), out), int(redo.sum())


@pytest.mark.parametrize("vocab", [7, 300, 5000])
@pytest.mark.parametrize("seed", range(8))
def test_fast_equals_reference_equals_oracle(seed, vocab):
    scores, top_k, top_p, uniforms = random_batch(seed, 24, vocab)
    fast, _ = fast_draw(scores, top_k, top_p, uniforms)
    ref = draw_tokens_reference(scores, *tensors(top_k, top_p, uniforms))
    assert fast.tolist() == ref.tolist()
    oracle = [oracle_sample(scores[r], SamplingParams(top_k[r], top_p[r]), uniforms[r])
              for r in range(len(top_k))]
    assert ref.tolist() == oracle
    assert all(torch.isfinite(scores[r, t]) for r, t in enumerate(oracle))


@pytest.mark.parametrize("seed", range(4))
def test_a_row_alone_draws_what_it_draws_in_any_batch(seed):
    """The shared k (the batch's largest) and the candidate count change with the batch; the
    token does not."""
    scores, top_k, top_p, uniforms = random_batch(100 + seed, 16, 2000)
    together, _ = fast_draw(scores, top_k, top_p, uniforms)
    for r in range(16):
        alone, _ = fast_draw(scores[r:r + 1], top_k[r:r + 1], top_p[r:r + 1], uniforms[r:r + 1])
        assert int(alone) == int(together[r]), r
    order = torch.randperm(16, generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled, _ = fast_draw(scores[order], [top_k[i] for i in order], [top_p[i] for i in order],
                            [uniforms[i] for i in order])
    assert shuffled.tolist() == [int(together[i]) for i in order]


def test_ties_beyond_the_shared_top_k_go_to_the_exact_path():
    gen = torch.Generator().manual_seed(3)
    scores = torch.stack([torch.full((60,), 0.5), torch.randn(60, generator=gen)])
    scores[0, 7] = 2.0  # one token above a 49-way tie at the k-th score, then lower ones
    scores[0, 50:] = -1.0
    top_k, top_p, uniforms = [3, 3], [0.9, 1.0], [0.7, 0.2]
    plan = DrawPlan.build(top_k, top_p, 60)
    out = draw_tokens(scores, *tensors(top_k, top_p, uniforms), plan)
    assert out.tolist()[0] == NEEDS_EXACT and out[1] != NEEDS_EXACT
    fixed, marked = fast_draw(scores, top_k, top_p, uniforms)
    assert marked == 1
    assert fixed.tolist() == [oracle_sample(scores[r], SamplingParams(3, top_p[r]), uniforms[r])
                              for r in range(2)]
    # with a larger shared k (another top-p row's) the same row needs no exact path
    _, marked = fast_draw(scores, [3, 50], [0.9, 0.5], uniforms)
    assert marked == 0


def test_draws_follow_the_filtered_distribution():
    """Sweeping u over a fine grid hits each kept token in proportion to its weight."""
    scores = torch.tensor([[2.0, 0.5, 1.0, 1.0, -1.0, NEG_INF, 3.0, 0.0]])
    top_k, top_p = [5], [0.95]
    kept = filter_scores_reference(scores, *tensors(top_k, top_p, [0.0])[:2])
    w = fixed_point_weights(kept)[0].double()
    n = 4000
    us = [(i + 0.5) / n for i in range(n)]
    batch = scores.expand(n, -1).contiguous()
    drawn, _ = fast_draw(batch, top_k * n, top_p * n, us)
    counts = torch.bincount(drawn, minlength=8).double()
    assert torch.all((counts - n * w / w.sum()).abs() <= 1.0)
    assert set(drawn.tolist()) == set(w.nonzero().flatten().tolist())


def test_plan_routes_rows_and_skips_forced_ones():
    plan = DrawPlan.build([0, 1, 5, 10, 0, 100, 7], [1.0, 0.5, 1.0, 0.9, 0.3, 0.2, 1.0], 100,
                          skip=[False] * 6 + [True])
    assert plan.select_rows == (2,) and plan.select_k_max == 5
    assert plan.top_k_rows == (3,) and plan.k_max == 10
    assert plan.greedy_rows == (1,) and plan.full_rows == (0,) and plan.sorted_rows == (4, 5)
    scores = torch.randn(7, 100)
    out = draw_tokens(scores, *tensors([0, 1, 5, 10, 0, 100, 7], [1.0] * 7, [0.5] * 7), plan)
    assert out[6] == 0 and out[1] == scores[1].argmax()
