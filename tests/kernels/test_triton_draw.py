"""The sort-free Triton draw (top-k rows without top-p) equals the plain full-vocabulary
definition token for token: under TRITON_INTERPRET=1 on a CPU-only machine (skipped without
Triton) on rows built for the edge cases (grammar masks, fewer finite scores than k, exact ties
at the k-th score, -0.0 beside +0.0, underflowing weights, uniforms at 0 and just below 1),
and with ``-m gpu`` compiled at the real vocabulary (V = 282,926)."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():  # must be set before triton.jit decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.token_draw import (NEEDS_EXACT, DrawPlan, draw_tokens,  # noqa: E402
                                draw_tokens_reference)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")
NEG_INF = float("-inf")
VOCAB, VISUAL_FINITE = 282926, 131072  # visual rows: only the last 131,072 ids are allowed
UNIFORM_EDGES = [0.0, 1e-12, 0.5, 1 - 1e-12, 1 - 2.0 ** -53]


def _row(kind: int, vocab: int, k: int, gen: torch.Generator) -> torch.Tensor:
    x = 3 * torch.randn(vocab, generator=gen)
    if kind == 1:    # a visual grammar mask: only the tail is finite, CFG-wide spread
        x = 5 * x
        x[: vocab - vocab * VISUAL_FINITE // VOCAB] = NEG_INF
    elif kind == 2:  # an exact tie straddling the k-th score
        ids = torch.randperm(vocab, generator=gen)
        x[ids[: k // 2]] += 20
        x[ids[k // 2: 2 * k]] = 7.25
    elif kind == 3:  # fewer finite scores than k
        x[torch.randperm(vocab, generator=gen)[k // 2:]] = NEG_INF
    elif kind == 4:  # few distinct values, zeros of both signs
        x = torch.round(x) / 4
        x[x == 0] = torch.where(torch.rand(int((x == 0).sum()), generator=gen) < 0.5, 0.0, -0.0)
    elif kind == 5:  # a wide spread: most weights round to 0 on the 2^-40 grid
        x = 40 * x
    elif kind == 6:  # all tied
        x = torch.full((vocab,), -1.5)
    elif kind == 7:  # nothing allowed
        x = torch.full((vocab,), NEG_INF)
    return x


def batch(seed: int, rows: int, vocab: int):
    gen = torch.Generator().manual_seed(seed)
    ks = [int(torch.randint(2, min(vocab, 400), (1,), generator=gen)) for _ in range(rows)]
    scores = torch.stack([_row((seed + r) % 8, vocab, ks[r], gen) for r in range(rows)])
    uniforms = [UNIFORM_EDGES[r % 5] if (seed + r) % 3 == 0 else
                float(torch.rand(1, generator=gen, dtype=torch.float64)) for r in range(rows)]
    return scores, torch.tensor(ks), torch.tensor(uniforms, dtype=torch.float64)


def reference(scores, k, u):
    return draw_tokens_reference(scores, k, torch.ones(len(k), dtype=torch.float64), u)


@pytest.mark.parametrize("rows,vocab,block,seed", [
    *((1, 3000, 256, s) for s in range(4)), *((3, 3000, 512, s) for s in range(4)),
    (8, 5000, 512, 0), (8, 5000, 1024, 1), (8, 20000, 4096, 2)])  # 8 rows: every row kind
def test_triton_draw_equals_reference(rows, vocab, block, seed):
    from kernels.triton_draw import draw_top_k

    scores, k, u = batch(seed, rows, vocab)
    out = draw_top_k(scores, k, u, torch.full((rows,), -7), block=block)
    assert out.tolist() == reference(scores, k, u).tolist()


def test_a_gathered_subset_writes_only_its_rows():
    from kernels.triton_draw import draw_top_k

    scores, k, u = batch(11, 6, 4000)
    rows = torch.tensor([4, 1, 2])
    out = draw_top_k(scores, k, u, torch.full((6,), -7), rows, block=512, programs_per_sm=1)
    want = reference(scores, k, u)
    assert [out[r] for r in (0, 3, 5)] == [-7] * 3
    assert out[rows].tolist() == want[rows].tolist()


def test_draw_tokens_routes_image_rows_to_triton_and_the_rest_to_torch():
    """A mixed batch: image rows (top-k only), text rows (top-k + top-p), greedy, no filter,
    forced; the same tokens with either select path and as the reference."""
    scores, _, u = batch(5, 8, 3000)
    top_k = [200, 50, 1, 0, 300, 7, 3000, 64]
    top_p = [1.0, 0.9, 1.0, 1.0, 1.0, 0.5, 0.8, 1.0]
    skip = [False] * 7 + [True]
    plan = DrawPlan.build(top_k, top_p, 3000, skip)
    assert plan.select_rows == (0, 4) and plan.top_k_rows == (1, 5)
    k, p = torch.tensor(top_k), torch.tensor(top_p, dtype=torch.float64)
    want = draw_tokens_reference(scores, k, p, u).tolist()
    for select in ("triton", "torch"):
        got = draw_tokens(scores, k, p, u, plan, select=select)
        got = torch.where(got == NEEDS_EXACT, torch.tensor(want), got).tolist()  # as sample()
        assert got[:7] == want[:7] and got[7] == 0, select


def test_real_vocabulary_visual_rows():
    """Two image rows at V = 282,926 (t2i and story k), one with a 5120-way tie at its k-th
    score, through draw_tokens as the sampler calls it."""
    gen = torch.Generator().manual_seed(7)
    scores = torch.full((2, VOCAB), NEG_INF)
    scores[:, VOCAB - VISUAL_FINITE:] = 15 * torch.randn(2, VISUAL_FINITE, generator=gen)
    scores[1, VOCAB - VISUAL_FINITE:: 20] = 11.0
    top_k = [5120, 10240]
    k, p = torch.tensor(top_k), torch.ones(2, dtype=torch.float64)
    u = torch.tensor([0.3, 1 - 2.0 ** -40], dtype=torch.float64)
    plan = DrawPlan.build(top_k, [1.0, 1.0], VOCAB)
    got = draw_tokens(scores, k, p, u, plan, select="triton")
    assert got.tolist() == draw_tokens_reference(scores, k, p, u).tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [2, 16, 64])
def test_gpu_real_vocabulary_equals_reference(rows):
    scores, _, u = batch(rows, rows, VOCAB)
    gen = torch.Generator().manual_seed(rows)
    top_k = [[5120, 10240, 2, VOCAB - 1][r % 4] for r in range(rows)]
    k = torch.tensor(top_k)
    p = torch.ones(rows, dtype=torch.float64)
    u = torch.where(torch.arange(rows) % 7 == 3,
                    torch.rand(rows, generator=gen, dtype=torch.float64), u)
    scores, k, p, u = (t.cuda() for t in (scores, k, p, u))
    plan = DrawPlan.build(top_k, [1.0] * rows, VOCAB)
    assert len(plan.select_rows) == rows
    got = draw_tokens(scores, k, p, u, plan)  # the registry's choice on CUDA: triton
    assert got.tolist() == draw_tokens_reference(scores, k, p, u).tolist()
    half = torch.arange(0, rows, 2, device="cuda")  # a gathered subset
    from kernels.triton_draw import draw_top_k

    out = draw_top_k(scores, k, u, torch.full((rows,), -7, device="cuda"), half)
    assert out[half].tolist() == got[half].tolist()
